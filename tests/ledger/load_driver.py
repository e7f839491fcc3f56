"""Load for crash tests, run as a subprocess: many threads asking the CA for certificates.

    python -m tests.ledger.load_driver GRPC_ADDR ROOT_PEM TOKEN_FILE OUT_FILE [THREADS]

Every certificate received is appended to OUT_FILE as `<serial hex>\\n` and flushed,
only after the response arrived. Errors (the CA being killed) are retried.
Runs until SIGTERM, then exits 0.
"""

from __future__ import annotations

import signal
import sys
import threading
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
    threads = int(argv[4]) if len(argv) > 4 else 8
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    token = Path(token_file).read_text().strip()
    creds = grpc.ssl_channel_credentials(Path(root).read_bytes())
    lock = threading.Lock()
    out = open(out_path, "a")  # noqa: SIM115 (closed at exit)

    def work(index: int) -> None:
        channel = grpc.secure_channel(addr, creds, options=CHANNEL_OPTIONS)
        csr = build_csr(generate_key(), SpiffeId.parse("spiffe://cluster.local/ns/load/sa/driver"))
        while not stop.is_set():
            try:
                chain = create_certificate(channel, csr, token=token, ttl_s=3600, timeout=5)
            except grpc.RpcError:
                stop.wait(0.02)
                continue
            serial = format(x509.load_pem_x509_certificate(chain[0].encode()).serial_number, "x")
            with lock:
                out.write(serial + "\n")
                out.flush()
        channel.close()

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
