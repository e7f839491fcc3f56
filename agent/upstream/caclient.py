"""The CA client: one `CreateCertificate` call per CSR, with Istio's TLS, headers and retries.

Each CSR opens a fresh channel, so a replaced root file, a renewed `PROV_CERT`
or a new token is picked up without any cache to invalidate; a renewal runs
at most a few times a day.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import grpc
from grpc import aio

from agent.config import AgentConfig
from agent.errors import CaRequestFailed
from agent.files.watch import UnusableFile, read_regular_file
from agent.metrics import AgentMetrics
from certs import istio_files
from certs.errors import CertsError
from certs.pem import bundle_pem, load_certificates
from protos.istio.v1.auth import ca_pb2, ca_pb2_grpc

log = logging.getLogger(__name__)

RETRYABLE = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
    }
)
SYSTEM_ROOTS = "SYSTEM"
# Refusals that asking again soon cannot change: the renewal backs off to its maximum.
DEFINITIVE = frozenset({grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT})


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Istio's CSR retries: at most `max_attempts` calls, waits 100 ms, 200 ms, ... +/- 10%."""

    max_attempts: int = 5
    base: timedelta = timedelta(milliseconds=100)
    jitter: float = 0.1

    def wait(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        base = self.base.total_seconds() * (2 ** (retry - 1))
        return float(base * (1.0 + rng.uniform(-self.jitter, self.jitter)))


class CaClient:
    """Sends CSRs to the CA named by the config; never logs the token."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        metrics: AgentMetrics,
        now: Callable[[], datetime],
        rng: random.Random | None = None,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._now = now
        self._rng = rng or random.Random()
        self._retry = retry
        self._good_roots: dict[Path, bytes] = {}  # the last root each file held that parsed
        self._root_problem = ""
        self._token_missing = False
        self._explained: dict[str, str] = {}  # CA error -> hint, so a diagnosis runs once
        self._warm: aio.Channel | None = None  # opened by `preconnect`, used by the next CSR

    def forget_refusals(self) -> None:
        """Diagnose errors afresh (SIGHUP: the operator may have changed something)."""
        self._explained.clear()
        self._root_problem = ""

    async def sign(
        self,
        csr_pem: bytes,
        ttl: timedelta,
        *,
        impersonate: str = "",
        channel: aio.Channel | None = None,
        token: bool = True,
    ) -> list[str]:
        """The CA's chain (leaf first, root last) for `csr_pem`, or `CaRequestFailed`.

        `impersonate`: a node agent asks for that workload's certificate with Istio's
        `ImpersonatedIdentity` metadata, as ztunnel does (docs/COMPATIBILITY.md §4).
        `channel`: send it there (the caller keeps and closes it) instead of on a fresh one;
        `token=False` when that channel authenticates with a client certificate."""
        request = ca_pb2.IstioCertificateRequest(
            csr=csr_pem.decode(), validity_duration=max(1, int(ttl.total_seconds()))
        )
        if self._config.cert_signer:
            request.metadata.update({"CertSigner": self._config.cert_signer})
        if impersonate:
            request.metadata.update({"ImpersonatedIdentity": impersonate})
        metadata = self.call_metadata(token=token)
        self._metrics.inc("num_outgoing_requests", request_type="csr")
        started = time.monotonic()
        owned = channel is None
        try:
            channel = channel or self._take_warm() or self._channel()
        except CaRequestFailed:
            self._metrics.inc("num_failed_outgoing_requests", request_type="csr")
            raise
        try:
            return await self._call_with_retries(channel, request, metadata)
        except CaRequestFailed:
            self._metrics.inc("num_failed_outgoing_requests", request_type="csr")
            raise
        finally:
            elapsed_ms = (time.monotonic() - started) * 1000.0
            self._metrics.inc("outgoing_latency", elapsed_ms, request_type="csr")
            if owned:
                await channel.close()

    async def _call_with_retries(
        self,
        channel: aio.Channel,
        request: ca_pb2.IstioCertificateRequest,
        metadata: tuple[tuple[str, str], ...],
    ) -> list[str]:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
        timeout = self._config.ca_request_timeout.total_seconds()
        for attempt in range(1, self._retry.max_attempts + 1):
            if attempt > 1:
                self._metrics.inc("num_outgoing_retries", request_type="csr")
                await asyncio.sleep(self._retry.wait(attempt - 1, self._rng))
            try:
                response = await stub.CreateCertificate(request, metadata=metadata, timeout=timeout)
            except aio.AioRpcError as exc:
                code = exc.code()
                reachable = code not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
                self._metrics.set("ca_reachable", 1.0 if reachable else 0.0)
                message = f"CA {self._config.ca_addr} answered {code.name}: {exc.details()}"
                if code in RETRYABLE and attempt < self._retry.max_attempts:
                    log.info("CSR attempt %d failed, retrying: %s", attempt, message)
                    continue
                hint = await self._hint(code, exc.details() or "")
                raise CaRequestFailed(message + hint, code, definitive=code in DEFINITIVE) from None
            self._metrics.set("ca_reachable", 1.0)
            return list(response.cert_chain)
        raise AssertionError("unreachable: the loop returns or raises")

    def preconnect(self) -> None:
        """Open the next CSR's channel now: grpc's threads make the TCP and TLS handshake while
        the agent goes on starting (loading the SDS stubs, binding the socket), and the first
        CSR does not wait for them. Problems (no root) are left for `sign` to report."""
        if self._warm is None:
            try:
                self._warm = self._channel()
            except CaRequestFailed:
                return
            self._warm.get_state(try_to_connect=True)

    async def close(self) -> None:
        """Close a channel `preconnect` opened that no CSR used."""
        if self._warm is not None:
            await self._warm.close()
            self._warm = None

    def _take_warm(self) -> aio.Channel | None:
        channel, self._warm = self._warm, None
        return channel

    def open_channel(self, *, client: tuple[bytes, bytes] | None = None) -> aio.Channel:
        """A fresh channel to the CA with the CSR's TLS and client certificate (the caller
        closes it); `CaRequestFailed` when there is no root to verify the CA with.

        `client` (key PEM, chain PEM): present that certificate instead, on the CA's
        client-certificate port (a node agent speaking as one of its workloads)."""
        return self._channel(client)

    def call_metadata(self, *, token: bool = True) -> tuple[tuple[str, str], ...]:
        """The CSR's headers (token re-read, cluster ID, CA_HEADER_*), for other CA calls;
        without the token for a call that authenticates with a client certificate."""
        pairs = self._metadata()
        return pairs if token else tuple(p for p in pairs if p[0] != "authorization")

    async def explain(self, code: grpc.StatusCode, details: str) -> str:
        """A hint on why the CA refused (diagnosed once per distinct error)."""
        return await self._hint(code, details)

    async def _hint(self, code: grpc.StatusCode, details: str) -> str:
        key = f"{code.name}:{details}"
        if key not in self._explained:
            from agent.upstream.diagnosis import explain  # only a failing agent pays for it

            self._explained[key] = await explain(
                code, details, self._config, token_missing=self._token_missing
            )
        return self._explained[key]

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        """Headers of one CSR; the token file is re-read every time."""
        pairs: list[tuple[str, str]] = []
        token = _read_token(self._config.token_path)
        self._token_missing = not token
        if token:
            pairs.append(("authorization", f"Bearer {token}"))
        if self._config.cluster_id:
            pairs.append(("clusterid", self._config.cluster_id))
        pairs.extend(self._config.ca_headers)
        return tuple(pairs)

    def _channel(self, client: tuple[bytes, bytes] | None = None) -> aio.Channel:
        if not self._config.ca_uses_tls:
            return aio.insecure_channel(self._config.ca_addr)
        root = self._root_pem()
        client_key, client_chain = client or self._provisioning_credentials()
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root, private_key=client_key, certificate_chain=client_chain
        )
        options = (("grpc.ssl_target_name_override", self._config.ca_server_name),)
        addr = self._config.ca_addr
        if client_key is not None and self._config.mtls_ca_addr:
            addr = self._config.mtls_ca_addr
        return aio.secure_channel(addr, credentials, options=options)

    def _root_pem(self) -> bytes | None:
        candidates = self._config.ca_root_candidates()
        if self._config.ca_root_ca is not None and str(self._config.ca_root_ca) == SYSTEM_ROOTS:
            return None
        for path in candidates:
            try:
                data = read_regular_file(path, self._config.file_resource_max_bytes)
                load_certificates(data, what=str(path))
            except FileNotFoundError:
                continue
            except (UnusableFile, CertsError) as exc:
                return self._last_good_root(path, str(exc))
            self._good_roots[path] = data
            self._root_problem = ""
            return data
        looked = ", ".join(str(p) for p in candidates)
        raise CaRequestFailed(f"no root certificate to verify the CA (looked at {looked})")

    def _last_good_root(self, path: Path, problem: str) -> bytes:
        """The root `path` held before it turned bad, or `CaRequestFailed` naming the file."""
        good = self._good_roots.get(path)
        if problem != self._root_problem:
            self._root_problem = problem
            self._metrics.inc("ca_root_failures_total")
            if good is not None:
                log.error("CA root %s is unusable, keeping the last good one: %s", path, problem)
        if good is None:
            raise CaRequestFailed(
                f"CA root {path} is unusable and none was loaded before: {problem}"
            )
        return good

    def _provisioning_credentials(self) -> tuple[bytes | None, bytes | None]:
        """PROV_CERT's key and chain while its leaf is still valid, else no client certificate."""
        directory = self._config.prov_cert_dir
        if directory is None:
            return None, None
        try:
            key = (directory / istio_files.KEY).read_bytes()
            certs = load_certificates(
                (directory / istio_files.CERT_CHAIN).read_bytes(),
                what=f"PROV_CERT {istio_files.CERT_CHAIN}",
            )
        except (OSError, CertsError) as exc:
            log.warning("PROV_CERT %s not usable, falling back to the token: %s", directory, exc)
            return None, None
        leaf = certs[0]
        # Istio's cert-chain.pem ends with the root; a client sends leaf and intermediates only.
        chain = bundle_pem([leaf, *(c for c in certs[1:] if c.subject != c.issuer)]).encode()
        if leaf.not_valid_after_utc <= self._now():
            log.info(
                "PROV_CERT certificate expired at %s; using the token", leaf.not_valid_after_utc
            )
            return None, None
        return key, chain


def _read_token(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        log.warning("cannot read token file %s: %s", path, exc.strerror)
        return ""
