"""Records written before the one-definition record shape keep verifying, row for row.

`golden/record-v1.db` was written by the code at 505d662 (the last commit before the record
shape was derived from one definition); GOLDEN_HASHES are its row hashes. Both guard the
hash-chain contract: the hashed columns, their canonical encoding and their values.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ca_server.record.entry import IssuedCertificate
from ca_server.record.ledger import open_reader
from ca_server.record.ledger.recorder import RecordWriter, prepare

GOLDEN_DB = Path(__file__).parent / "golden" / "record-v1.db"
BASE = datetime(2026, 1, 1, tzinfo=UTC)
PEM = "-----BEGIN CERTIFICATE-----\nTUlJQmdvbGRlbg==\n-----END CERTIFICATE-----\n"
GOLDEN_HASHES = [
    "b5dc927930f182c18c0f11ceec8077617e42408d4096b33e7a015afbf005972d",
    "8446764e73a8398cc41653ee37720855e4e64409b9fe400ab4aefb4c4c1af389",
    "5b753c7bab4f07df3ab969943c61132f91f75fade35ab50b2456534afd68c3ce",
    "472432d8dc0391be3326c47d9841f9eb9183f66216eca1568aace8d836a1eec9",
    "3e5de44f7f23b55d17ad01d04aa7f1a335507239e23c4ee5b900b23b71baea4f",
]


def golden_entry(i: int) -> IssuedCertificate:
    """The i-th entry of the golden record, exactly as it was written."""
    ns, sa = f"ns{i % 2}", f"sa{i}"
    return IssuedCertificate(
        serial=format(0xABC000 + i, "x"),
        spiffe_id=f"spiffe://cluster.local/ns/{ns}/sa/{sa}",
        namespace=ns,
        service_account=sa,
        not_before=BASE + timedelta(hours=i),
        not_after=BASE + timedelta(hours=i + 24),
        public_key_sha256=f"{i:02x}" * 32,
        authenticator="jwt" if i % 2 else "client-cert",
        subject=f"system:serviceaccount:{ns}:{sa}",
        pod_name=f"pod-{i}",
        pod_uid=f"uid-{i}",
        peer=f"ipv4:127.0.0.1:{5000 + i}",
        cluster_id="Kubernetes",
        csr_sha256=f"{i + 16:02x}" * 32,
        issuer_serial="1f",
        certificate_pem=PEM,
    )


def recorded_at(i: int) -> datetime:
    return BASE + timedelta(minutes=i, microseconds=123 * i)


def test_a_record_written_by_the_old_code_verifies(tmp_path: Path) -> None:
    """One definition of the record shape must not change what an old row hashes to."""
    copy = tmp_path / "record.db"
    shutil.copyfile(GOLDEN_DB, copy)
    reader = open_reader(f"sqlite:///{copy}")  # migrates the schema if it is older
    try:
        report = reader.verify()
        assert report.ok and report.rows_checked == 5 and report.head_seq == 5
        for i in range(5):
            stored = reader.get(format(0xABC000 + i, "x"))
            assert stored is not None
            assert stored.row_hash == GOLDEN_HASHES[i]
            assert stored.recorded_at == recorded_at(i)
            for name in ("spiffe_id", "not_before", "not_after", "peer", "certificate_pem"):
                assert getattr(stored, name) == getattr(golden_entry(i), name)
    finally:
        reader.close()


def test_new_rows_hash_as_the_old_code_did(tmp_path: Path) -> None:
    """The same entries written today chain to the same hashes as at 505d662."""
    url = prepare(f"sqlite:///{tmp_path / 'record.db'}")
    for i in range(5):
        writer = RecordWriter(url, clock=lambda i=i: recorded_at(i))  # type: ignore[misc]
        writer.record(golden_entry(i))
        writer.close()
    reader = open_reader(f"sqlite:///{tmp_path / 'record.db'}")
    try:
        hashes = [reader.get(format(0xABC000 + i, "x")).row_hash for i in range(5)]  # type: ignore[union-attr]
    finally:
        reader.close()
    assert hashes == GOLDEN_HASHES
