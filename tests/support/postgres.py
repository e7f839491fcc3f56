"""A throwaway PostgreSQL cluster for tests: initdb + pg_ctl on a free loopback port.

The Debian `postgresql` package provides the binaries (`make test` installs it).
PostgreSQL refuses to run as root, so under root the server runs as the
`postgres` user in a temporary directory that user owns. Missing binaries are
an error, never a skip.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tests.support.ports import free_port

POSTGRES_USER = "postgres"


def find_bin_dir() -> Path:
    """The newest installed PostgreSQL server's bin directory."""
    override = os.environ.get("BULWARK_TEST_PG_BIN")
    if override:
        return Path(override)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if not candidates:
        raise RuntimeError(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin:"
            " install the Debian package 'postgresql' (make test does this)"
        )
    return Path(candidates[-1]).parent


def _as_owner(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", POSTGRES_USER, "--", *argv]
    return argv


@dataclass
class PostgresCluster:
    """A running throwaway cluster; `database()` makes a fresh empty database."""

    base_dir: Path
    bin_dir: Path
    port: int

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{POSTGRES_USER}@127.0.0.1:{self.port}/{dbname}"

    def database(self, prefix: str = "bulwark") -> str:
        """Create a new database and return its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            _as_owner(
                [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "stop"]
            ),
            check=False,
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.base_dir, ignore_errors=True)


def start_postgres() -> PostgresCluster:
    """initdb and start a cluster listening on 127.0.0.1 at a free port."""
    bin_dir = find_bin_dir()
    base = Path(tempfile.mkdtemp(prefix="bulwark-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, user=POSTGRES_USER, group=None)
    os.chmod(base, 0o700)
    cluster = PostgresCluster(base_dir=base, bin_dir=bin_dir, port=free_port())
    try:
        _run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(cluster.data_dir),
                "-A",
                "trust",
                "-U",
                POSTGRES_USER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        options = (
            f"-p {cluster.port} -k {base} -c listen_addresses=127.0.0.1 -c max_connections=200"
        )
        _run(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(cluster.data_dir),
                "-l",
                str(base / "server.log"),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
            ]
        )
    except BaseException:
        log = base / "server.log"
        detail = log.read_text() if log.exists() else ""
        cluster.stop()
        raise RuntimeError(f"could not start PostgreSQL: {detail[-2000:]}") from None
    return cluster


def _run(argv: list[str]) -> None:
    result = subprocess.run(_as_owner(argv), capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stderr[-2000:]}")
