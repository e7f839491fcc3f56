"""Connection floods and bursts against a real CA, for the descriptor fault tests.

`IdleFlood` is one client (its own loopback address, 127.0.0.2) that opens TLS connections
to the CA's gRPC port and never sends a byte over them; with `refill` it opens a new one
for each the CA closes. `burst` is many callers at once, each on its own connection, as
agents are; `ask` is one caller. Answers are (gRPC code name, details).
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import threading
from collections import Counter
from dataclasses import dataclass, field

import grpc
from cryptography import x509

from protos.istio.v1.auth import ca_pb2, ca_pb2_grpc
from tests.support.ca_client import SERVER_NAME

FLOOD_SOURCE = "127.0.0.2"  # the flooding client's address; callers use 127.0.0.1


@dataclass
class IdleFlood:
    """Holds up to `size` idle TLS connections from FLOOD_SOURCE, on a thread of its own."""

    grpc_addr: str
    size: int
    refill: bool = True
    opened: int = 0
    closed_by_ca: int = 0
    _held: list[ssl.SSLSocket] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def held(self) -> int:
        return len(self._held)

    def start(self) -> IdleFlood:
        self._thread = threading.Thread(target=self._run, name="idle-flood", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for sock in self._held:
            sock.close()

    def _run(self) -> None:
        host, port = self.grpc_addr.rsplit(":", 1)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # a flood does not care who answers
        context.set_alpn_protocols(["h2"])  # else grpc drops the connection at once
        attempts = 0
        while not self._stop.is_set():
            self._forget_closed()
            if len(self._held) >= self.size or (not self.refill and attempts >= self.size):
                self._stop.wait(0.01)
                continue
            attempts += 1
            try:
                raw = socket.create_connection(
                    (host, int(port)), timeout=2, source_address=(FLOOD_SOURCE, 0)
                )
                tls = context.wrap_socket(raw)
            except OSError:  # refused at the CA's cap, or its handshake dropped
                self._stop.wait(0.01)
                continue
            tls.setblocking(False)
            self._held.append(tls)
            self.opened += 1

    def _forget_closed(self) -> None:
        if not self._held:
            return
        readable, _, _ = select.select(self._held, [], [], 0)
        for sock in readable:
            try:
                if sock.recv(1):
                    continue
            except ssl.SSLWantReadError:  # a TLS record (a session ticket), no data
                continue
            except OSError:
                pass
            self._held.remove(sock)
            sock.close()
            self.closed_by_ca += 1


async def ask(
    grpc_addr: str, root_pem: bytes, token: str, csr_pem: str, *, timeout: float = 10.0, n: int = 0
) -> tuple[str, str]:
    """One CreateCertificate on a connection of its own (`n` keeps channels apart): the
    code name and details, or ("OK", serial of the leaf in hex)."""
    options = [
        ("grpc.ssl_target_name_override", SERVER_NAME),
        ("grpc.use_local_subchannel_pool", 1),
        ("bulwark.test.caller", n),
    ]
    credentials = grpc.ssl_channel_credentials(root_pem)
    async with grpc.aio.secure_channel(grpc_addr, credentials, options=options) as channel:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
        request = ca_pb2.IstioCertificateRequest(csr=csr_pem, validity_duration=3600)
        try:
            response = await stub.CreateCertificate(
                request, metadata=(("authorization", f"Bearer {token}"),), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, exc.details() or ""
    leaf = x509.load_pem_x509_certificate(response.cert_chain[0].encode())
    return "OK", format(leaf.serial_number, "x")


async def burst(
    grpc_addr: str, root_pem: bytes, token: str, csr_pem: str, callers: int, timeout: float
) -> list[tuple[str, str]]:
    """`callers` CreateCertificate calls at once, each on its own connection."""
    return list(
        await asyncio.gather(
            *(
                ask(grpc_addr, root_pem, token, csr_pem, timeout=timeout, n=n)
                for n in range(callers)
            )
        )
    )


def codes(answers: list[tuple[str, str]]) -> dict[str, int]:
    return dict(Counter(code for code, _ in answers))
