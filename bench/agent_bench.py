"""Agent benchmark: start-to-first-SDS-certificate time, RSS, idle CPU, SDS push latency.

RSS is reported next to the library floor measured in the same run (`agent_floor`): grpcio,
cryptography and protobuf doing only the agent's library work, without any agent code.

The agent reaches the CA through a byte-forwarding TCP proxy in this process, which notes when
the CA's answers pass through; the push latency of a rotation is the time from the CA's answer
reaching the agent's connection to the rotated secret arriving on each of 10 SDS streams.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import procstat
from tests.support.ca_process import RunningCa, tree_env

ISTIOD_SAN = "istiod.istio-system.svc"
# Another agent started the same way: (CA, proxy port, start index) -> its figures of one start.
Peer = Callable[[RunningCa, int, int], Awaitable[dict[str, float]]]
SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


class Proxy:
    """Forwards TCP to the CA; remembers when bytes came back from it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.down: list[float] = []  # monotonic times of CA -> agent chunks
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(*self.target)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, note: bool) -> None:
            try:
                while data := await src.read(65536):
                    if note:
                        self.down.append(time.monotonic())
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_w, False), pump(up_r, writer, True))

    def last_down_before(self, t: float) -> float | None:
        before = [x for x in self.down if x <= t]
        return before[-1] if before else None


def spawn_agent(
    ca: RunningCa, work: Path, proxy_port: int, name: str, extra_env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], Path, float]:
    token = work / f"token-{name}"
    token.write_text(ca.mint_token("bench", name))
    sock = work / f"{name}.sock"
    env = {
        **tree_env(os.environ),
        "POD_NAMESPACE": "bench",
        "SERVICE_ACCOUNT": name,
        "CA_ADDR": f"127.0.0.1:{proxy_port}",
        "CA_ROOT_CA": str(ca.root_cert_path),
        "ISTIOD_SAN": ISTIOD_SAN,
        "BULWARK_TOKEN_PATH": str(token),
        "BULWARK_AGENT_STATUS_ADDR": "",
        "ECC_SIGNATURE_ALGORITHM": "ECDSA",
        **extra_env,
    }
    log = open(work / f"agent-{name}.log", "ab")  # noqa: SIM115 (owned by the process)
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--socket", str(sock)],
        cwd=work,
        env=env,
        stdout=log,
        stderr=log,
    )
    return proc, sock, started


class SdsStream:
    """One StreamSecrets call for `default`, ACKing each response; arrival times are kept."""

    def __init__(self, channel: Any) -> None:
        from envoy.service.secret.v3 import sds_pb2_grpc

        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.arrivals: list[tuple[float, str]] = []  # (monotonic time, version_info)
        self.call = sds_pb2_grpc.SecretDiscoveryServiceStub(channel).StreamSecrets(self._requests())

    async def _requests(self) -> Any:
        from envoy.service.discovery.v3 import discovery_pb2

        req = discovery_pb2.DiscoveryRequest(type_url=SECRET_TYPE_URL, resource_names=["default"])
        req.node.id = "sidecar~10.0.0.1~bench.bench~bench.svc.cluster.local"
        yield req
        while True:
            resp = await self.queue.get()
            yield discovery_pb2.DiscoveryRequest(
                type_url=SECRET_TYPE_URL,
                resource_names=["default"],
                version_info=resp.version_info,
                response_nonce=resp.nonce,
            )

    async def run(self, first: asyncio.Event | None = None) -> None:
        async for resp in self.call:
            if any(r.value for r in resp.resources):
                self.arrivals.append((time.monotonic(), resp.version_info))
                if first is not None:
                    first.set()
            await self.queue.put(resp)


async def wait_socket(sock: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until the agent accepts connections on `sock`: the file exists a moment before the
    server listens, and an RPC made in that moment fails at once with UNAVAILABLE."""
    deadline = time.monotonic() + timeout
    while not _accepts(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"agent did not listen on {sock}")
        await asyncio.sleep(0.002)


def _accepts(sock: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(sock))
        except OSError:
            return False
    return True


async def first_cert(
    ca: RunningCa, work: Path, proxy: Proxy, port: int, i: int, idle_s: float
) -> dict[str, float]:
    import grpc

    proc, sock, started = spawn_agent(ca, work, port, f"start-{i}", {})
    try:
        await wait_socket(sock, proc)
        async with grpc.aio.insecure_channel(f"unix:{sock}") as ch:
            first = asyncio.Event()
            stream = SdsStream(ch)
            task = asyncio.create_task(stream.run(first))
            await asyncio.wait_for(first.wait(), 30)
            first_s = stream.arrivals[0][0] - started
            await asyncio.sleep(1.0)
            rss = procstat.sample(proc.pid).rss_bytes / 2**20
            anon = procstat.anonymous_bytes(proc.pid) / 2**20
            out = {"first_cert_s": first_s, "rss_mb": rss, "anon_mb": anon}
            if idle_s:
                before = procstat.sample(proc.pid)
                await asyncio.sleep(idle_s)
                out["idle_cpu_pct"] = procstat.sample(proc.pid).cpu_since(before) / idle_s * 100
            task.cancel()
        return out
    finally:
        proc.terminate()
        proc.wait(10)


async def push_latency(
    ca: RunningCa,
    work: Path,
    proxy: Proxy,
    port: int,
    ttl_s: int,
    watch_s: float,
    streams: int = 10,
) -> list[float]:
    import grpc

    proc, sock, _ = spawn_agent(ca, work, port, "push", {"SECRET_TTL": f"{ttl_s}s"})
    try:
        await wait_socket(sock, proc)
        async with grpc.aio.insecure_channel(f"unix:{sock}") as ch:
            subs = [SdsStream(ch) for _ in range(streams)]
            tasks = [asyncio.create_task(s.run()) for s in subs]
            await asyncio.sleep(watch_s)
            for t in tasks:
                t.cancel()
        latencies = []
        for s in subs:
            seen: set[str] = set()
            for arrived, version in s.arrivals:
                if version in seen:
                    continue
                seen.add(version)
                if len(seen) == 1:
                    continue  # the stream's initial state, not a rotation push
                down = proxy.last_down_before(arrived)
                if down is not None:
                    latencies.append((arrived - down) * 1e3)
        return latencies
    finally:
        proc.terminate()
        proc.wait(10)


async def _bench(
    ca: RunningCa,
    work: Path,
    starts: int,
    idle_s: float,
    ttl_s: int,
    watch_s: float,
    peer: Peer | None = None,
) -> dict[str, Any]:
    host, port = ca.grpc_addr.rsplit(":", 1)
    proxy = Proxy((host, int(port)))
    proxy_port = await proxy.start()
    runs: list[dict[str, float]] = []
    peer_runs: list[dict[str, float]] = []
    for i in range(starts):
        # Interleaved with the peer's starts, the order alternating, so noise touches both.
        if peer is not None and i % 2:
            peer_runs.append(await peer(ca, proxy_port, i))
        runs.append(await first_cert(ca, work, proxy, proxy_port, i, idle_s if i == 0 else 0.0))
        if peer is not None and not i % 2:
            peer_runs.append(await peer(ca, proxy_port, i))
    pushes = await push_latency(ca, work, proxy, proxy_port, ttl_s, watch_s)
    assert proxy.server is not None
    proxy.server.close()
    firsts = sorted(r["first_cert_s"] for r in runs)
    pushes.sort()
    return {
        "peer_runs": peer_runs,
        "starts": len(runs),
        "first_cert_s": firsts,
        "first_cert_s_p50": firsts[len(firsts) // 2],
        "rss_mb": max(r["rss_mb"] for r in runs),
        "anon_mb": max(r["anon_mb"] for r in runs),
        "idle_cpu_pct": runs[0].get("idle_cpu_pct"),
        "push_samples": len(pushes),
        "push_p50_ms": pushes[len(pushes) // 2] if pushes else None,
        "push_p99_ms": pushes[min(len(pushes) - 1, int(len(pushes) * 0.99))] if pushes else None,
        "push_max_ms": pushes[-1] if pushes else None,
    }


def library_floor(ca: RunningCa, work: Path, runs: int = 5) -> dict[str, float]:
    """`agent_floor` run `runs` times (~1.5 s each): its highest RSS and anonymous memory after
    the certificate, and the median time from spawning it to its verified certificate."""
    import statistics

    token = work / "token-floor"
    token.write_text(ca.mint_token("bench", "floor"))
    spiffe_id = "spiffe://cluster.local/ns/bench/sa/floor"
    args = [ca.grpc_addr, str(ca.root_cert_path), str(token), spiffe_id, str(work / "floor.sock")]
    results = []
    for _ in range(runs):
        (work / "floor.sock").unlink(missing_ok=True)
        env = {**tree_env(os.environ), "BENCH_SPAWNED_AT": repr(time.time())}
        out = subprocess.run(
            [sys.executable, "-m", "bench.agent_floor", *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        results.append({k: float(v) for k, v in json.loads(out.stdout).items()})
    return {
        "rss_mb": max(x["rss_mb"] for x in results),
        "anon_mb": max(x["anon_mb"] for x in results),
        "first_cert_s_p50": statistics.median(x["first_cert_s"] for x in results),
    }


def bench_agent(
    ca: RunningCa,
    work: Path,
    *,
    starts: int = 5,
    idle_s: float = 10.0,
    ttl_s: int = 8,
    watch_s: float = 30.0,
    peer: Peer | None = None,
) -> dict[str, Any]:
    """Our agent's figures; with `peer` (e.g. pilot-agent) its starts interleaved with ours,
    their raw results under "peer_runs"."""
    work.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(_bench(ca, work, starts, idle_s, ttl_s, watch_s, peer))
    floor = library_floor(ca, work)
    result["floor_rss_mb"] = floor["rss_mb"]
    result["floor_anon_mb"] = floor["anon_mb"]
    result["floor_first_cert_s_p50"] = floor["first_cert_s_p50"]
    result["rss_over_floor"] = result["rss_mb"] / floor["rss_mb"]
    return result


if __name__ == "__main__":
    import tempfile

    from tests.support.ca_process import start_ca

    w = Path(tempfile.mkdtemp(prefix="bwa-", dir="/tmp"))
    ca = start_ca(w / "ca", "--mtls-grpc-addr", "", workers=1)
    try:
        print(json.dumps(bench_agent(ca, w / "agent", starts=3, idle_s=3, watch_s=15), indent=1))
    finally:
        ca.stop()
