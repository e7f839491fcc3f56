"""pilot-agent, Istio's own agent, as the peer of Bulwark's agent in `make bench`.

Measured exactly as bench/agent_bench.py measures our agent, against the same Bulwark CA
through the same byte-forwarding proxy: the clock starts just before the process is spawned;
the first certificate is the first Secret with content on a StreamSecrets call for `default`
made over its SDS socket as soon as the socket exists; RSS is read 1 s after that Secret. The
pod layout and the Envoy stand-in (pilot-agent only supervises Envoy) are the interop
harness's (tests/support/pilot_agent.py). ECDSA keys, as our agent is run with. RSS is
pilot-agent's own (the stand-in `sleep` it starts is not counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from bench import procstat
from bench.agent_bench import SdsStream, wait_socket
from tests.support.ca_process import RunningCa
from tests.support.interop import IstioBinaries
from tests.support.pilot_agent import Workload, start_pilot_agent


async def pilot_first_cert(
    istio: IstioBinaries, ca: RunningCa, proxy_port: int, i: int
) -> dict[str, float]:
    """One start of pilot-agent: seconds to its first SDS certificate, RSS after it (MB)."""
    import grpc

    name = f"pilot-{i}"
    # A short root: the SDS socket path must fit in 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="bwp-"))
    workload = Workload("bench", name, f"{name}-0", ca.mint_token("bench", name))
    started = time.monotonic()
    agent = start_pilot_agent(
        istio,
        root,
        ca_addr=f"127.0.0.1:{proxy_port}",
        root_cert=ca.root_cert_path,
        workload=workload,
        extra_env={"ECC_SIGNATURE_ALGORITHM": "ECDSA"},
    )
    try:
        await wait_socket(agent.sds_socket, agent.process)
        async with grpc.aio.insecure_channel(f"unix:{agent.sds_socket}") as ch:
            first = asyncio.Event()
            stream = SdsStream(ch)
            task = asyncio.create_task(stream.run(first))
            try:
                await asyncio.wait_for(first.wait(), 30)
            except TimeoutError as exc:
                raise RuntimeError(f"pilot-agent sent no certificate:\n{agent.log()}") from exc
            first_s = stream.arrivals[0][0] - started
            await asyncio.sleep(1.0)
            rss = procstat.rss_bytes(agent.process.pid) / 2**20
            anon = procstat.anonymous_bytes(agent.process.pid) / 2**20
            task.cancel()
        return {"first_cert_s": first_s, "rss_mb": rss, "anon_mb": anon}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agent.process.pid, signal.SIGKILL)
        agent.process.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def summarize(runs: list[dict[str, float]]) -> dict[str, object]:
    firsts = sorted(r["first_cert_s"] for r in runs)
    return {
        "starts": len(runs),
        "first_cert_s": firsts,
        "first_cert_s_p50": firsts[len(firsts) // 2],
        "rss_mb": max(r["rss_mb"] for r in runs),
        "rss_mb_runs": [r["rss_mb"] for r in runs],
        "anon_mb": max(r["anon_mb"] for r in runs),
    }
