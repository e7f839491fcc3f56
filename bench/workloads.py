"""Simulated workloads: an ECDSA P-256 key, a CSR for its SPIFFE ID and a token each.

Made once before the load starts (in parallel processes), so the load generator
spends its CPU on requests, not on cryptography.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

NAMESPACE = "bench"


@dataclass(frozen=True, slots=True)
class Workload:
    account: str
    csr_pem: str
    token: str


def _make(args: tuple[str, int, int, int]) -> list[tuple[str, str, str]]:
    from ca_server.authn.local_issuer import LocalIssuer
    from certs.csr import build_csr
    from certs.keys import generate_key
    from certs.spiffe_id import SpiffeId, TrustDomain

    data_dir, start, stop, token_ttl_s = args
    issuer = LocalIssuer.load_or_create(Path(data_dir))
    td = TrustDomain("cluster.local")
    out = []
    for i in range(start, stop):
        account = f"sa-{i}"
        sid = SpiffeId.for_service_account(td, NAMESPACE, account)
        csr = build_csr(generate_key(), sid).decode()
        token = issuer.mint(
            namespace=NAMESPACE, service_account=account, ttl=timedelta(seconds=token_ttl_s)
        )
        out.append((account, csr, token))
    return out


def make_workloads(data_dir: Path, count: int, *, token_ttl_s: int = 7200) -> list[Workload]:
    """`count` workloads whose tokens the CA of `data_dir` trusts (its embedded issuer)."""
    from ca_server.authn.local_issuer import LocalIssuer

    LocalIssuer.load_or_create(data_dir)  # create the key once, before the pool races
    step = 500
    chunks = [(str(data_dir), s, min(s + step, count), token_ttl_s) for s in range(0, count, step)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        parts = pool.map(_make, chunks)
    return [Workload(*w) for part in parts for w in part]


def save(workloads: list[Workload], path: Path) -> None:
    path.write_text(json.dumps([[w.account, w.csr_pem, w.token] for w in workloads]))


def load(path: Path) -> list[Workload]:
    return [Workload(*w) for w in json.loads(path.read_text())]
