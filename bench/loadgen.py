"""Closed-loop load generator, run as its own process: `concurrency` callers, each sending its
next request as soon as the last one is answered, to Bulwark (gRPC: CreateCertificate, or a
node agent's BatchCreateCertificates of `--batch-size` items) or cfssl (HTTP/1.1 JSON).
Figures are per certificate: a batch call counts as its items (a failed item fails the call).

It reads the server's CPU from /proc at the start and end of the measured window itself, so the
window and the count of certificates match exactly. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grpc.aio import Channel

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import procstat  # noqa: E402
from bench.workloads import NAMESPACE, Workload, load  # noqa: E402

METHOD = "/istio.v1.auth.IstioCertificateService/CreateCertificate"
BATCH_METHOD = "/bulwark.v1.CertificateService/BatchCreateCertificates"
SERVER_NAME = "istiod.istio-system.svc"

Call = Callable[[int], Awaitable[bool]]


def grpc_request_bytes(csr_pem: str, ttl_s: int) -> bytes:
    from protos.istio.v1.auth import ca_pb2

    return ca_pb2.IstioCertificateRequest(csr=csr_pem, validity_duration=ttl_s).SerializeToString()


def grpc_channels(addr: str, root_pem: bytes, count: int) -> list[Channel]:
    """`count` channels with a connection each (SO_REUSEPORT spreads connections, not calls)."""
    import grpc

    creds = grpc.ssl_channel_credentials(root_pem)
    return [
        grpc.aio.secure_channel(
            addr,
            creds,
            options=[
                ("grpc.ssl_target_name_override", SERVER_NAME),
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.channel_id", i),
            ],
        )
        for i in range(count)
    ]


def batch_request_bytes(items: list[Workload], ttl_s: int) -> bytes:
    from protos.bulwark.v1 import identity_pb2

    return identity_pb2.BatchCreateCertificatesRequest(
        params=[
            identity_pb2.CertificateParams(
                csr=w.csr_pem,
                spiffe_id=f"spiffe://cluster.local/ns/{NAMESPACE}/sa/{w.account}",
                validity_duration=ttl_s,
            )
            for w in items
        ]
    ).SerializeToString()


def batch_issued(response: bytes, expected: int) -> bool:
    """Whether every item of a batch answer is a certificate."""
    from protos.bulwark.v1 import identity_pb2

    results = identity_pb2.BatchCreateCertificatesResponse.FromString(response).results
    return len(results) == expected and all(r.status.code == 0 for r in results)


async def batch_caller(
    args: argparse.Namespace, workloads: list[Workload]
) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """A node agent's batches: `--batch-size` workloads' CSRs per call, for their identities,
    under the node agent's token (`--node-token-file`)."""
    import grpc

    channels = grpc_channels(
        args.addr, Path(args.root).read_bytes(), min(args.concurrency, args.channels)
    )
    stubs = [ch.unary_unary(BATCH_METHOD) for ch in channels]
    size = args.batch_size
    groups = [workloads[i : i + size] for i in range(0, len(workloads) - size + 1, size)]
    requests = [batch_request_bytes(group, 3600) for group in groups]
    metadata = (("authorization", f"Bearer {Path(args.node_token_file).read_text().strip()}"),)

    async def call(i: int) -> bool:
        try:
            response = await stubs[i % len(stubs)](
                requests[i % len(requests)], metadata=metadata, timeout=60
            )
        except grpc.aio.AioRpcError:
            return False
        return batch_issued(response, size)

    async def close() -> None:
        for ch in channels:
            await ch.close()

    return call, close


async def grpc_caller(
    args: argparse.Namespace, workloads: list[Workload]
) -> tuple[Call, Callable[[], Awaitable[None]]]:
    import grpc

    channels = grpc_channels(
        args.addr, Path(args.root).read_bytes(), min(args.concurrency, args.channels)
    )
    stubs = [ch.unary_unary(METHOD) for ch in channels]
    requests = [grpc_request_bytes(w.csr_pem, 3600) for w in workloads]
    metadata = [(("authorization", f"Bearer {w.token}"),) for w in workloads]

    async def call(i: int) -> bool:
        k = i % len(workloads)
        try:
            await stubs[i % len(stubs)](requests[k], metadata=metadata[k], timeout=30)
        except grpc.aio.AioRpcError:
            return False
        return True

    async def close() -> None:
        for ch in channels:
            await ch.close()

    return call, close


class HttpConnection:
    """A minimal keep-alive HTTP/1.1 client: cheap enough not to disturb the measurement."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        data = await self.reader.readexactly(length)
        return int(status_line.split()[1]), data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def cfssl_caller(
    args: argparse.Namespace, workloads: list[Workload]
) -> tuple[Call, Callable[[], Awaitable[None]]]:
    host, port = args.addr.rsplit(":", 1)
    conns = [HttpConnection(host, int(port)) for _ in range(args.concurrency)]
    bodies = [json.dumps({"certificate_request": w.csr_pem}).encode() for w in workloads]

    async def call(i: int, worker: int = 0) -> bool:
        status, data = await conns[worker].post("/api/v1/cfssl/sign", bodies[i % len(bodies)])
        return status == 200 and b'"success":true' in data

    async def close() -> None:
        for c in conns:
            await c.close()

    return call, close


async def run(args: argparse.Namespace) -> dict[str, object]:
    workloads = load(Path(args.workloads))
    if args.mode == "grpc":
        call, close = await grpc_caller(args, workloads)
    elif args.mode == "batch":
        call, close = await batch_caller(args, workloads)
    else:
        call, close = await cfssl_caller(args, workloads)
    per_call = args.batch_size if args.mode == "batch" else 1
    seq = [0]  # next request index
    state = {"measuring": False, "stop": False}
    latencies: list[float] = []
    failures = [0, 0]  # warm-up, measured

    async def worker(w: int) -> None:
        while not state["stop"]:
            i = seq[0]
            seq[0] += 1
            measuring = state["measuring"]
            t0 = time.perf_counter()
            ok = await (call(i, w) if args.mode == "cfssl" else call(i))  # type: ignore[call-arg]
            if not ok:
                failures[measuring] += 1
            elif measuring and state["measuring"]:
                latencies.append(time.perf_counter() - t0)

    tasks = [asyncio.create_task(worker(w)) for w in range(args.concurrency)]
    # warm-up: every workload once (tokens enter the verified-token cache), then a little more
    warm_until = time.monotonic() + args.warmup_s
    warm_calls = len(workloads) // per_call + args.concurrency
    while time.monotonic() < warm_until or seq[0] < warm_calls:
        await asyncio.sleep(0.05)
    before = procstat.sample(args.server_pid, switches=True)
    client_before = procstat.self_cpu_s()
    t_start = time.perf_counter()
    state["measuring"] = True
    deadline = time.monotonic() + args.duration_s
    while time.monotonic() < deadline and len(latencies) < args.max_requests:
        await asyncio.sleep(0.02)
    state["measuring"] = False
    elapsed = time.perf_counter() - t_start
    after = procstat.sample(args.server_pid, switches=True)
    client_cpu = procstat.self_cpu_s() - client_before
    state["stop"] = True
    await asyncio.gather(*tasks, return_exceptions=True)
    await close()
    n = len(latencies) * per_call  # certificates: every measured call issued all its items
    server_cpu = after.cpu_since(before)
    return {
        "mode": args.mode,
        "concurrency": args.concurrency,
        "batch_size": per_call,
        "calls": len(latencies),
        "certs": n,
        "elapsed_s": elapsed,
        "certs_per_s": n / elapsed if elapsed else 0.0,
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_cert": server_cpu / n * 1e6 if n else None,
        "server_switches_per_cert": after.switches_since(before) / n if n else None,
        "client_cpu_us_per_cert": client_cpu / n * 1e6 if n else None,
        "server_rss_mb": after.rss_bytes / 2**20,
        "failures_warmup": failures[0],
        "failures": failures[1],
        "latencies_ms": [x * 1e3 for x in latencies],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("mode", choices=["grpc", "batch", "cfssl"])
    p.add_argument("--addr", required=True)
    p.add_argument("--root", help="CA root PEM (gRPC TLS)")
    p.add_argument("--workloads", required=True)
    p.add_argument("--server-pid", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--max-requests", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=32, help="batch mode: items per call")
    p.add_argument("--node-token-file", help="batch mode: the node agent's token")
    args = p.parse_args()
    result = asyncio.run(run(args))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
