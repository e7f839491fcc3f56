"""Root renewal and plugged-in reloads with an injected clock (no sleeping)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from ca_server.authority.material import (
    CaMaterial,
    DirectoryKeyStore,
    load_cacerts_dir,
    load_or_create,
)
from ca_server.authority.refresh import MaterialManager, renewal_due
from certs.keys import generate_key
from certs.profile import leaf_certificate
from certs.spiffe_id import SpiffeId, TrustDomain
from certs.verify import verify_svid
from tests.support.ca_process import RunningCa
from tests.support.openssl import make_cacerts

TD = TrustDomain("cluster.local")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
ME = SpiffeId.parse("spiffe://cluster.local/ns/demo/sa/frontend")


def _leaf(material: CaMaterial, now: datetime) -> list[x509.Certificate]:
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
    assert renewal_due(first, late)
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
        may_act=lambda: False,
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


def _get(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _reload_errors(admin_url: str) -> float:
    import re

    _, text = _get(f"{admin_url}/metrics")
    found = re.search(r"^bulwark_ca_material_reload_errors_total ([0-9.]+)$", text, re.MULTILINE)
    assert found, "the reload error counter is exported"
    return float(found.group(1))


def _install_new_set(kind: str, tmp_path: Path, source: Path) -> bytes:
    """Write a new matching set where the CA reads its material; the root a client must trust."""
    if kind == "cacerts":
        other = make_cacerts(tmp_path / "b")
        for name in ("cert-chain.pem", "ca-cert.pem", "root-cert.pem", "ca-key.pem"):
            (source / name).write_bytes((other / name).read_bytes())
        return (other / "root-cert.pem").read_bytes()
    from ca_server.authority.material import create_self_signed
    from certs.pem import to_pem

    fresh = create_self_signed(TD, datetime.now(UTC))
    DirectoryKeyStore(source).replace(fresh)
    return to_pem(fresh.signing_cert).encode()


def _directory_at_key_for_2_5_s(ca: RunningCa, key: Path) -> None:
    """Put a directory at the key's path for 2.5 s; the failure shows in metrics and /readyz."""
    import time

    key.unlink()
    key.mkdir()
    started = time.monotonic()
    while _reload_errors(ca.admin_url) < 1:
        assert time.monotonic() < started + 20, ca.log()[-2000:]
        time.sleep(0.1)
    status, body = _get(f"{ca.admin_url}/readyz")
    assert status == 200 and "reload failing" in body and str(key) not in body, body
    time.sleep(max(0.0, 2.5 - (time.monotonic() - started)))


@pytest.mark.parametrize("kind", ["cacerts", "self-signed"])
def test_refresher_survives_an_unreadable_key_and_picks_up_the_next_set(
    kind: str, tmp_path: Path
) -> None:
    """Issue #13 item 1: a directory at the key's path stopped material refresh for good
    (only two error types were caught), nothing was logged, and SIGTERM exited 1 with an
    IsADirectoryError traceback. Now: counted, logged once with the path, shown in /readyz,
    retried each interval; the next good set is used; SIGTERM exits 0."""
    import time

    from certs.pem import load_certificates
    from tests.support.broken import csr_pem
    from tests.support.ca_client import channel, create_certificate
    from tests.support.ca_process import start_ca

    if kind == "cacerts":
        source = make_cacerts(tmp_path / "a")
        ca = start_ca(
            tmp_path / "ca", "--cacerts-dir", str(source), "--material-check-interval", "1s"
        )
    else:
        source = tmp_path / "ca" / "ca"
        ca = start_ca(tmp_path / "ca", "--material-check-interval", "1s")
    old_root = ca.root_cert_path.read_bytes()
    key = source / "ca-key.pem"
    try:
        _directory_at_key_for_2_5_s(ca, key)
        # Still serving the previous material meanwhile.
        create_certificate(
            channel(ca.grpc_addr, old_root),
            csr_pem(generate_key(), uris=(str(ME),)),
            token=ca.mint_token("demo", "frontend"),
        )
        key.rmdir()
        new_root = _install_new_set(kind, tmp_path, source)
        deadline = time.monotonic() + 30
        while "worker(s) now sign with the new CA material" not in ca.log():
            assert time.monotonic() < deadline, "new set never used:\n" + ca.log()[-3000:]
            time.sleep(0.1)
        chain = create_certificate(
            channel(ca.grpc_addr, new_root),
            csr_pem(generate_key(), uris=(str(ME),)),
            token=ca.mint_token("demo", "frontend"),
        )
        leaf = load_certificates(chain[0])[0]
        signer = load_certificates((source / "ca-cert.pem").read_bytes())[0]
        assert leaf.issuer == signer.subject
        verify_svid(
            [leaf, *(c for pem in chain[1:-1] for c in load_certificates(pem))],
            load_certificates(new_root),
            now=datetime.now(UTC),
        )
        assert ca.root_cert_path.read_bytes() == new_root
        _, body = _get(f"{ca.admin_url}/readyz")
        assert "CA material current" in body, body
    finally:
        code = ca.stop()
    log = ca.log()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert log.count(f"cannot read {key}: Is a directory") == 1, log[-3000:]


def test_deleted_or_altered_root_cert_pem_is_rewritten(tmp_path: Path) -> None:
    """Issue #13 item 4: root-cert.pem deleted while the CA ran was never rewritten."""
    import time

    from tests.support.ca_process import start_ca

    ca = start_ca(tmp_path / "ca", "--material-check-interval", "0.3s")
    try:
        good = ca.root_cert_path.read_bytes()
        for damage in ("delete", "alter"):
            if damage == "delete":
                ca.root_cert_path.unlink()
            else:
                ca.root_cert_path.write_bytes(b"not a bundle\n")
            deadline = time.monotonic() + 20
            while not ca.root_cert_path.exists() or ca.root_cert_path.read_bytes() != good:
                assert time.monotonic() < deadline, f"root-cert.pem not restored after {damage}"
                time.sleep(0.05)
    finally:
        assert ca.stop() == 0


def test_deleted_self_signed_material_is_an_error_not_a_rollback(tmp_path: Path) -> None:
    """The refresher answered a deleted `ca/` with the material the CA started with, silently
    rolling back a renewed root; now the check fails (counted and logged) and the current
    material is kept."""
    from ca_server.config import CaConfig
    from ca_server.errors import ConfigError
    from ca_server.process.material import material_manager as _material_manager

    store = DirectoryKeyStore(tmp_path / "ca")
    first = load_or_create(store, TD, T0)
    manager = _material_manager(CaConfig(data_dir=tmp_path), first)
    late = T0 + timedelta(days=int(3650 * 0.85))
    assert manager.refresh(late) is True, "renewed"
    renewed = manager.current
    for stored in (tmp_path / "ca").iterdir():
        stored.unlink()
    with pytest.raises(ConfigError, match="are gone"):
        manager.refresh(late + timedelta(hours=1))
    assert manager.current is renewed
