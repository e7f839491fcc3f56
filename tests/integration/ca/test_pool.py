"""The worker pool runs whatever target it is given, in real spawned processes.

`run_worker` is one target; these tests hand the pool a small one that notes each start
(index and keys) in a file and answers key updates, to show what the pool does with any
target: starts `count` processes, passes each the latest keys, restarts one that cannot
apply new keys, with those keys.
"""

from __future__ import annotations

import asyncio
import time
from multiprocessing.connection import Connection
from pathlib import Path

from ca_server.process.pool import KEYS_APPLIED, WorkerPool

REFUSED = "keys this target cannot apply"


def noting_worker(starts: Path, keys: str, index: int, pipe: Connection) -> None:
    """Note `index keys` in `starts`, say it serves, then answer every keys update."""
    with starts.open("a") as out:
        out.write(f"{index} {keys}\n")
    pipe.send("serving")
    while True:
        try:
            update = pipe.recv()
        except EOFError:
            return
        pipe.send(KEYS_APPLIED if update != REFUSED else "not applied: a test refusal")


def _starts(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_the_pool_runs_its_target_with_the_latest_keys(tmp_path: Path) -> None:
    starts = tmp_path / "starts"

    async def run() -> None:
        pool = WorkerPool(target=noting_worker, spec=starts, keys="first", count=2)
        await pool.start()
        try:
            assert pool.readiness() == (True, "2 worker(s) serving")
            assert _starts(starts) == ["0 first", "1 first"]
            await pool.update("second")  # both apply it in place: nothing restarts
            assert _starts(starts) == ["0 first", "1 first"]
            assert pool.keys == "second"
        finally:
            pool.stop()

    asyncio.run(run())


def test_a_worker_that_cannot_apply_new_keys_is_restarted_with_them(tmp_path: Path) -> None:
    starts = tmp_path / "starts"

    async def run() -> None:
        pool = WorkerPool(target=noting_worker, spec=starts, keys="first", count=1)
        await pool.start()
        watcher = asyncio.create_task(pool.watch())
        try:
            await pool.update(REFUSED)
            deadline = time.monotonic() + 30
            while len(_starts(starts)) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert _starts(starts) == ["0 first", f"0 {REFUSED}"]
        finally:
            watcher.cancel()
            pool.stop()

    asyncio.run(run())
