"""Load for fault tests, run as a subprocess: threads asking the CA for certificates.

    python -m tests.faults.load_driver GRPC_ADDR ROOT_PEM TOKEN_FILE OUT_FILE [THREADS]

Each answer is appended to OUT_FILE as one line, `<unix time> OK <serial hex>` after a
certificate arrived or `<unix time> <gRPC code name>` after an error, and flushed, so the
test sees what clients saw and when. Errors are retried after a short pause. Runs until
SIGTERM, then exits 0.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import grpc
from cryptography import x509

from certs.csr import build_csr
from certs.keys import generate_key
from certs.spiffe_id import SpiffeId
from tests.support.ca_client import SERVER_NAME, create_certificate

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
                note(exc.code().name)  # type: ignore[attr-defined]
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
