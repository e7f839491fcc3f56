"""Intermediate mode: `bulwark ca intermediate csr|install` with a real openssl offline root,
then a rotation to a second intermediate through the slots (bundle = the offline root,
each leaf's chain carries the intermediate that signed it)."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from ca_server.authority.material import CaMaterial, load_cacerts_dir
from ca_server.authority.slots.model import SlotPolicy
from ca_server.authority.slots.rotator import SlotRotator
from ca_server.authority.slots.store import DirectorySlotStore
from certs.cli import main as bulwark
from certs.keys import generate_key
from certs.pem import load_certificates
from certs.profile import leaf_certificate
from certs.spiffe_id import SpiffeId, TrustDomain
from certs.verify import verify_svid
from tests.support.openssl import _INTERMEDIATE_EXT, openssl, self_signed_ca

ME = SpiffeId.parse("spiffe://cluster.local/ns/demo/sa/web")
POLICY = SlotPolicy(propagation_delay=timedelta(hours=1), max_ttl=timedelta(hours=24))


@pytest.fixture
def offline_root(tmp_path: Path) -> Path:
    d = tmp_path / "offline"
    d.mkdir()
    (d / "ca.ext").write_text(_INTERMEDIATE_EXT)
    self_signed_ca(d / "root-key.pem", "/O=cluster.local/CN=Offline Root", out=d / "root.pem")
    return d


def _issue_intermediate(tmp_path: Path, offline: Path, name: str) -> Path:
    """csr (bulwark) -> signed by the offline root (openssl) -> the signed PEM path."""
    csr = tmp_path / f"{name}.csr"
    assert (
        bulwark(
            ["ca", "intermediate", "csr", "--key-dir", str(tmp_path / "keys"), "--out", str(csr)]
        )
        == 0
    )
    key = tmp_path / "keys" / "pending-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    signed = tmp_path / f"{name}.pem"
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", "root.pem", "-CAkey", "root-key.pem",
        "-CAcreateserial", "-days", "365", "-extfile", "ca.ext", "-out", str(signed),
        cwd=offline,
    )  # fmt: skip
    return signed


def _install(tmp_path: Path, offline: Path, signed: Path) -> int:
    return bulwark(
        [
            "ca", "intermediate", "install", "--key-dir", str(tmp_path / "keys"),
            "--cert", str(signed), "--root", str(offline / "root.pem"),
            "--cacerts-dir", str(tmp_path / "cacerts"),
        ]
    )  # fmt: skip


def _leaf_chain(material: CaMaterial, now: datetime) -> list[x509.Certificate]:
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


def test_intermediate_rotation_keeps_the_offline_root_and_the_right_chain(
    tmp_path: Path, offline_root: Path
) -> None:
    first = _issue_intermediate(tmp_path, offline_root, "first")
    assert _install(tmp_path, offline_root, first) == 0
    cacerts = tmp_path / "cacerts"
    assert stat.S_IMODE((cacerts / "ca-key.pem").stat().st_mode) == 0o600
    now = datetime.now(UTC)
    rotator = SlotRotator(
        store=DirectorySlotStore(tmp_path / "slots"),
        policy=POLICY,
        trust_domain=TrustDomain("cluster.local"),
        self_signed=False,
    )
    one = rotator.step(load_cacerts_dir(cacerts, now), now, may_act=True)
    root = load_certificates((offline_root / "root.pem").read_bytes())
    assert one.roots == tuple(root)
    old_chain = _leaf_chain(one, now)

    second = _issue_intermediate(tmp_path, offline_root, "second")
    assert _install(tmp_path, offline_root, second) == 0
    prepared = rotator.step(load_cacerts_dir(cacerts, now), now, may_act=True)
    assert prepared.signing_cert == one.signing_cert, "the new intermediate does not sign yet"
    assert prepared.roots == tuple(root), "bundle = the offline root, once"

    later = now + timedelta(hours=1)
    two = rotator.step(load_cacerts_dir(cacerts, later), later, may_act=True)
    assert two.signing_cert == load_certificates(second.read_bytes())[0]
    assert two.chain[0] == two.signing_cert, "chains carry the new intermediate"
    new_chain = _leaf_chain(two, later)
    for chain in (old_chain, new_chain):
        verify_svid(chain, list(two.roots), now=later)


def test_install_refuses_a_certificate_for_another_key(tmp_path: Path, offline_root: Path) -> None:
    signed = _issue_intermediate(tmp_path, offline_root, "first")
    bulwark(
        [
            "ca",
            "intermediate",
            "csr",
            "--key-dir",
            str(tmp_path / "keys"),
            "--out",
            str(tmp_path / "x.csr"),
        ]
    )
    assert _install(tmp_path, offline_root, signed) == 2
    assert not (tmp_path / "cacerts").exists(), "nothing written"


def test_install_refuses_a_certificate_of_another_root(
    tmp_path: Path, offline_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signed = _issue_intermediate(tmp_path, offline_root, "first")
    self_signed_ca(offline_root / "other-key.pem", "/O=x/CN=Other", out=offline_root / "other.pem")
    (offline_root / "root.pem").write_bytes((offline_root / "other.pem").read_bytes())
    assert _install(tmp_path, offline_root, signed) == 2
    assert "does not chain" in capsys.readouterr().err
    assert not (tmp_path / "cacerts" / "ca-cert.pem").exists()
