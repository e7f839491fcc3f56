"""Pods on a node agent's socket, for `bench/node_bench.py`: `python -m bench.node_clients MODE ...`.

Each "pod" is its own connection (its own gRPC channel, never shared) holding what a meshed
pod holds: an SDS `StreamSecrets` for `default` and `ROOTCA`, ACKed as Envoy does, and a
Workload API `FetchX509SVID` stream. A pod is served when its `default` certificate has been
received and verified against the CA's root (chain and SPIFFE rules) and its Workload API
stream has delivered its first SVID. Times are wall-clock (`time.time()`), comparable across
the processes of one machine.

    hold SOCKET ROOT PODS   wait for the socket to appear, then open PODS pods at once; print
                            one JSON line (when the socket was seen, when each pod was served)
                            and keep the streams open until killed
    first SOCKET ROOT       one pod on a running agent; print the milliseconds from its
                            connect to its verified certificate (this process's gRPC runtime
                            and certificate verifier loaded beforehand, as an Envoy's are)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from agent.endpoints.workload_proto import SECURITY_HEADER, SERVICE, workload_pb2
from certs.pem import load_certificates
from certs.verify import verify_svid

SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
NODE_ID = "sidecar~10.0.0.1~pod.bench~bench.svc.cluster.local"
# One connection per pod: channels with equal arguments would share a subchannel.
OPTIONS = (("grpc.use_local_subchannel_pool", 1),)


class Pod:
    """One pod's connection and its two streams."""

    def __init__(self, socket: str, roots: list[Any]) -> None:
        self._socket = socket
        self._roots = roots
        self.channel: grpc.aio.Channel | None = None
        self._acks: asyncio.Queue[Any] = asyncio.Queue()
        self.calls: list[Any] = []

    async def serve(self) -> tuple[float, float]:
        """(when the verified certificate arrived, when the Workload API's SVID arrived)."""
        self.channel = grpc.aio.insecure_channel(f"unix:{self._socket}", options=OPTIONS)
        sds = sds_pb2_grpc.SecretDiscoveryServiceStub(self.channel).StreamSecrets(self._requests())
        self.calls.append(sds)
        pb = workload_pb2()
        x509 = self.channel.unary_stream(
            f"/{SERVICE}/FetchX509SVID",
            request_serializer=pb.X509SVIDRequest.SerializeToString,
            response_deserializer=pb.X509SVIDResponse.FromString,
        )(pb.X509SVIDRequest(), metadata=((SECURITY_HEADER, "true"),))
        self.calls.append(x509)
        served = await self._first_certificate(sds)
        first = await x509.read()
        if first is grpc.aio.EOF or not first.svids:
            raise RuntimeError("the Workload API stream ended without an SVID")
        return served, time.time()

    async def _requests(self) -> Any:
        yield discovery_pb2.DiscoveryRequest(
            node={"id": NODE_ID}, resource_names=["default", "ROOTCA"], type_url=SECRET_TYPE_URL
        )
        while True:
            response = await self._acks.get()
            yield discovery_pb2.DiscoveryRequest(
                resource_names=["default", "ROOTCA"],
                type_url=SECRET_TYPE_URL,
                version_info=response.version_info,
                response_nonce=response.nonce,
            )

    async def _first_certificate(self, sds: Any) -> float:
        while True:
            response = await sds.read()
            if response is grpc.aio.EOF:
                raise RuntimeError("the SDS stream ended before a certificate")
            self._acks.put_nowait(response)
            for packed in response.resources:
                secret = secret_pb2.Secret()
                packed.Unpack(secret)
                if secret.name == "default":
                    chain = load_certificates(secret.tls_certificate.certificate_chain.inline_bytes)
                    verify_svid(chain, self._roots, now=datetime.now(UTC))
                    return time.time()


async def hold(socket: str, root: str, pods: int) -> None:
    roots = load_certificates(Path(root).read_bytes())
    while not os.path.exists(socket):
        await asyncio.sleep(0.002)
    seen = time.time()
    held = [Pod(socket, roots) for _ in range(pods)]
    times = await asyncio.gather(*(p.serve() for p in held))
    print(
        json.dumps(
            {"seen": seen, "served": [t for t, _ in times], "workload_api": [w for _, w in times]}
        ),
        flush=True,
    )
    await asyncio.Event().wait()  # keep every stream open until killed


async def first(socket: str, root: str) -> None:
    roots = load_certificates(Path(root).read_bytes())
    await _warm_grpc(socket)
    _warm_verifier()
    pod = Pod(socket, roots)
    started = time.time()
    served, _ = await pod.serve()
    print(json.dumps({"ms": (served - started) * 1000.0}), flush=True)
    assert pod.channel is not None
    await pod.channel.close()


async def _warm_grpc(socket: str) -> None:
    """Start this process's gRPC runtime (its threads, its poller) on a path where nothing
    listens: an Envoy starting in a new pod pays no Python gRPC start-up, so neither may the
    measurement. The node agent sees no connection."""
    nowhere = grpc.aio.insecure_channel(f"unix:{socket}.nowhere", options=OPTIONS)
    with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError):
        await asyncio.wait_for(nowhere.channel_ready(), 0.2)
    await nowhere.close()


def _warm_verifier() -> None:
    """Load the verifier's code paths on a throwaway chain made here (an Envoy's TLS stack is
    loaded before its first secret arrives), and the SDS messages' classes."""
    from datetime import timedelta

    from certs.keys import KeyType, generate_key
    from certs.profile import leaf_certificate, self_signed_root
    from certs.spiffe_id import SpiffeId

    now = datetime.now(UTC)
    spiffe_id = SpiffeId.parse("spiffe://warm.up/ns/warm/sa/up")
    root_key, key = generate_key(KeyType.EC_P256), generate_key(KeyType.EC_P256)
    root = self_signed_root(key=root_key, trust_domain=spiffe_id.trust_domain, now=now)
    leaf = leaf_certificate(
        spiffe_id=spiffe_id,
        public_key=key.public_key(),
        issuer_cert=root,
        issuer_key=root_key,
        now=now,
        ttl=timedelta(minutes=5),
    )
    verify_svid([leaf, root], [root], now=now)
    secret_pb2.Secret.FromString(secret_pb2.Secret(name="default").SerializeToString())


def main(argv: list[str]) -> int:
    mode, socket, root, *rest = argv
    if mode == "hold":
        asyncio.run(hold(socket, root, int(rest[0])))
    elif mode == "first":
        asyncio.run(first(socket, root))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
