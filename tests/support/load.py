"""Load against a real CA, for crash, fault and shared-record tests.

`Load` runs this module in a subprocess (`python -m tests.support.load GRPC_ADDR ROOT_PEM
TOKEN_FILE OUT_FILE [THREADS]`): threads asking the CA for certificates. Each answer is
appended to OUT_FILE as one line, `<unix time> OK <serial hex>` after a certificate arrived
or `<unix time> <gRPC code name>` after an error, and flushed, so a test sees what clients
saw and when. Errors are retried after a short pause. Runs until SIGTERM, then exits 0.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc
from cryptography import x509

from certs.csr import build_csr
from certs.keys import generate_key
from certs.spiffe_id import SpiffeId
from tests.support.ca_client import SERVER_NAME, create_certificate
from tests.support.ca_process import REPO, RunningCa

CHANNEL_OPTIONS = [
    ("grpc.ssl_target_name_override", SERVER_NAME),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 300),
]


def main(argv: list[str]) -> int:
    addr, root, token_file, out_path = argv[:4]
    threads = int(argv[4]) if len(argv) > 4 else 4
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    token = Path(token_file).read_text().strip()
    creds = grpc.ssl_channel_credentials(Path(root).read_bytes())
    lock = threading.Lock()
    out = open(out_path, "a")  # noqa: SIM115 (closed at exit)

    def note(text: str) -> None:
        with lock:
            out.write(f"{time.time():.3f} {text}\n")
            out.flush()

    def work() -> None:
        channel = grpc.secure_channel(addr, creds, options=CHANNEL_OPTIONS)
        csr = build_csr(generate_key(), SpiffeId.parse("spiffe://cluster.local/ns/load/sa/driver"))
        while not stop.is_set():
            try:
                chain = create_certificate(channel, csr, token=token, ttl_s=3600, timeout=5)
            except grpc.RpcError as exc:
                note(exc.code().name)
                stop.wait(0.05)
                continue
            cert = x509.load_pem_x509_certificate(chain[0].encode())
            note(f"OK {cert.serial_number:x}")
        channel.close()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.close()
    return 0


@dataclass(frozen=True)
class Answer:
    at: float
    code: str  # "OK" or a gRPC status name
    serial: str | None


class Load:
    """`python -m tests.support.load` in a subprocess against one CA: what its clients saw."""

    def __init__(self, ca: RunningCa, workdir: Path, *, threads: int = 4) -> None:
        token_file = workdir / f"{ca.data_dir.name}-token"
        token_file.write_text(ca.mint_token("load", "driver", ttl_s=3600))
        token_file.chmod(0o600)
        self.out = workdir / f"{ca.data_dir.name}-answers.txt"
        self.out.touch()
        argv = [ca.grpc_addr, str(ca.root_cert_path), str(token_file), str(self.out), str(threads)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.load", *argv], cwd=REPO
        )

    def answers(self) -> list[Answer]:
        found = []
        for line in self.out.read_text().split("\n")[:-1]:  # complete lines only
            at, code, *rest = line.split()
            found.append(Answer(float(at), code, rest[0] if rest else None))
        return found

    def received(self) -> list[str]:
        return [a.serial for a in self.answers() if a.serial is not None]

    def wait_for(self, count: int, timeout: float = 60.0) -> None:
        """Wait until `count` certificates arrived in all."""
        self.wait_for_ok(count, timeout=timeout)

    def wait_for_ok(self, count: int, *, after: float = 0.0, timeout: float = 60.0) -> float:
        """Wait until `count` certificates arrived after `after`; the time of the first."""
        deadline = time.monotonic() + timeout
        while True:
            oks = [a.at for a in self.answers() if a.code == "OK" and a.at >= after]
            if len(oks) >= count:
                return oks[0]
            assert self.process.poll() is None, "load driver died"
            assert time.monotonic() < deadline, f"only {len(oks)} of {count} issued"
            time.sleep(0.02)

    def wait_for_error(self, code: str, *, after: float, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(a.code == code and a.at >= after for a in self.answers()):
            assert time.monotonic() < deadline, f"no {code} seen: {self.codes(after)}"
            time.sleep(0.02)

    def codes(self, after: float = 0.0, before: float = float("inf")) -> dict[str, int]:
        return dict(Counter(a.code for a in self.answers() if after <= a.at < before))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
