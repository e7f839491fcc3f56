"""Root renewal and plugged-in reloads with an injected clock (no sleeping)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from ca_server.material import CaMaterial, DirectoryKeyStore, load_cacerts_dir, load_or_create
from ca_server.rotation import MaterialManager, rotation_due
from certs.keys import generate_key
from certs.profile import leaf_certificate
from certs.spiffe_id import SpiffeId, TrustDomain
from certs.verify import verify_svid
from tests.support.openssl import make_cacerts

TD = TrustDomain("cluster.local")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
ME = SpiffeId.parse("spiffe://cluster.local/ns/demo/sa/frontend")


def _leaf(material: CaMaterial, now: datetime) -> list:  # type: ignore[type-arg]
    key = generate_key()
    leaf = leaf_certificate(
        spiffe_id=ME,
        public_key=key.public_key(),
        issuer_cert=material.signing_cert,
        issuer_key=material.signing_key,
        now=now,
        ttl=timedelta(hours=1),
    )
    return [leaf, *material.chain]


def test_self_signed_root_is_renewed_with_the_same_key_and_old_leaves_still_verify(
    tmp_path: Path,
) -> None:
    store = DirectoryKeyStore(tmp_path / "ca")
    first = load_or_create(store, TD, T0)
    changes: list[CaMaterial] = []
    manager = MaterialManager(
        initial=first, reload=lambda now: store.load() or first, store=store, trust_domain=TD
    )
    manager.subscribe(changes.append)

    assert manager.refresh(T0 + timedelta(days=365)) is False, "80% of life left: nothing to do"
    assert changes == []

    late = T0 + timedelta(days=int(3650 * 0.85))
    old_leaf = _leaf(first, late - timedelta(minutes=30))
    assert rotation_due(first, late)
    assert manager.refresh(late) is True
    renewed = manager.current
    assert changes == [renewed]
    assert renewed.signing_cert != first.signing_cert
    assert renewed.signing_cert.public_key() == first.signing_cert.public_key()
    assert renewed.signing_cert.subject == first.signing_cert.subject
    assert renewed.roots == (renewed.signing_cert, first.signing_cert), (
        "old root stays in the bundle"
    )
    # A leaf issued before the renewal verifies against the new root alone, and vice versa.
    verify_svid(old_leaf, [renewed.signing_cert], now=late)
    verify_svid(_leaf(renewed, late), [first.signing_cert], now=late)
    # Stored: a restart comes back on the renewed root and the whole bundle.
    again = DirectoryKeyStore(tmp_path / "ca").load()
    assert again is not None and again.roots == renewed.roots
    assert manager.refresh(late + timedelta(hours=1)) is False, (
        "a stale check does not rotate twice"
    )


def test_followers_do_not_rotate(tmp_path: Path) -> None:
    store = DirectoryKeyStore(tmp_path / "ca")
    first = load_or_create(store, TD, T0)
    manager = MaterialManager(
        initial=first,
        reload=lambda now: store.load() or first,
        store=store,
        trust_domain=TD,
        may_rotate=lambda: False,
    )
    assert manager.refresh(T0 + timedelta(days=3600)) is False
    assert manager.current is first


def test_plugged_in_files_are_reloaded_when_they_change(tmp_path: Path) -> None:
    cacerts = make_cacerts(tmp_path / "a")
    other = make_cacerts(tmp_path / "b")
    now = datetime.now(UTC)
    first = load_cacerts_dir(cacerts, now)
    manager = MaterialManager(
        initial=first, reload=lambda t: load_cacerts_dir(cacerts, t), store=None, trust_domain=TD
    )
    assert manager.refresh(now) is False
    for name in ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"):
        (cacerts / name).write_bytes((other / name).read_bytes())
    assert manager.refresh(now) is True
    assert manager.current.roots != first.roots
    verify_svid(_leaf(manager.current, now), list(manager.current.roots), now=now)


def test_running_ca_reloads_plugged_in_files_without_restart(tmp_path: Path) -> None:
    import threading
    import time

    from tests.support.broken import csr_pem
    from tests.support.ca_client import channel, create_certificate
    from tests.support.ca_process import start_ca

    cacerts = make_cacerts(tmp_path / "a")
    other = make_cacerts(tmp_path / "b")
    ca = start_ca(
        tmp_path / "ca",
        "--cacerts-dir",
        str(cacerts),
        "--material-check-interval",
        "0.3s",
        workers=2,
    )
    both_roots = (cacerts / "root-cert.pem").read_bytes() + (other / "root-cert.pem").read_bytes()
    issued: list[list[str]] = []
    failures: list[Exception] = []
    done = threading.Event()

    def keep_issuing() -> None:
        # A fresh connection per call: the swap must never reset or refuse one.
        while not done.is_set():
            try:
                issued.append(
                    create_certificate(
                        channel(ca.grpc_addr, both_roots),
                        csr_pem(generate_key(), uris=(str(ME),)),
                        token=ca.mint_token("demo", "frontend"),
                    )
                )
            except Exception as exc:
                failures.append(exc)

    client = threading.Thread(target=keep_issuing)
    client.start()
    try:
        pid = ca.process.pid if ca.process else None
        for name in ("cert-chain.pem", "ca-cert.pem", "ca-key.pem", "root-cert.pem"):
            (cacerts / name).write_bytes((other / name).read_bytes())
        deadline = time.monotonic() + 30
        while "2 CA worker(s) now sign with the new CA material" not in ca.log():
            assert time.monotonic() < deadline, "workers not updated:\n" + ca.log()[-2000:]
            time.sleep(0.1)
        assert ca.root_cert_path.read_bytes() == (other / "root-cert.pem").read_bytes()
        # Only the new root now: the serving certificate was replaced too.
        chain = create_certificate(
            channel(ca.grpc_addr, (other / "root-cert.pem").read_bytes()),
            csr_pem(generate_key(), uris=(str(ME),)),
            token=ca.mint_token("demo", "frontend"),
        )
        assert chain[1:] == [
            (other / "ca-cert.pem").read_text(),
            (other / "root-cert.pem").read_text(),
        ]
        assert ca.process is not None and ca.process.pid == pid and ca.process.poll() is None
        assert "restarting" not in ca.log()
    finally:
        done.set()
        client.join()
        ca.stop()
    assert not failures, failures[:3]
    assert issued and any(c[1] == (other / "ca-cert.pem").read_text() for c in issued)


def test_running_ca_renews_an_aging_self_signed_root(tmp_path: Path) -> None:
    import time

    from certs.pem import load_certificates, to_pem
    from tests.support.broken import csr_pem
    from tests.support.ca_client import channel, create_certificate
    from tests.support.ca_process import start_ca

    store = DirectoryKeyStore(tmp_path / "ca" / "ca")
    aging = load_or_create(store, TD, datetime.now(UTC) - timedelta(days=3300))
    ca = start_ca(tmp_path / "ca", "--material-check-interval", "0.3s")
    try:
        deadline = time.monotonic() + 30
        while len(load_certificates(ca.root_cert_path.read_bytes())) < 2:
            assert time.monotonic() < deadline, "root not renewed:\n" + ca.log()[-2000:]
            time.sleep(0.1)
        new_root, old_root = load_certificates(ca.root_cert_path.read_bytes())
        assert old_root == aging.signing_cert
        assert new_root.public_key() == old_root.public_key()
        assert new_root.not_valid_after_utc > datetime.now(UTC) + timedelta(days=3000)
        # Clients holding only the old root keep working: same key, same subject.
        deadline = time.monotonic() + 30
        while "1 CA worker(s) now sign with the new CA material" not in ca.log():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        chain = create_certificate(
            channel(ca.grpc_addr, to_pem(old_root).encode()),
            csr_pem(generate_key(), uris=(str(ME),)),
            token=ca.mint_token("demo", "frontend"),
        )
        leaf = load_certificates(chain[0])[0]
        verify_svid([leaf], [old_root], now=datetime.now(UTC))
        verify_svid([leaf], [new_root], now=datetime.now(UTC))
        assert "self-signed root renewed" in ca.log()
    finally:
        ca.stop()
