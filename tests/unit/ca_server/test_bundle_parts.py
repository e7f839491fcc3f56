"""The bundle's parts in-process: the endpoint's https_spiffe certificate follows the CA
material and renews at half life; foreign bundles are checked before they are kept, and a
bad one never replaces a kept one."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ca_server.authority.material import create_self_signed
from ca_server.spiffe.endpoint import ServingIdentity
from ca_server.spiffe.federation import FederationStore, foreign_bundle
from certs.errors import InvalidBundle
from certs.pem import load_certificates
from certs.spiffe_id import TrustDomain
from certs.verify import spiffe_id_of

TD = TrustDomain("cluster.local")
NOW = datetime.now(UTC)


def test_endpoint_svid_follows_the_material_and_renews_at_half_life(tmp_path: Path) -> None:
    materials = [create_self_signed(TD, NOW)]
    identity = ServingIdentity(
        profile="https_spiffe", work_dir=tmp_path / "ep", trust_domain=TD,
        material=lambda: materials[-1],
    )  # fmt: skip

    def served() -> tuple[str, int]:
        leaf = load_certificates((tmp_path / "ep" / "svid.pem").read_bytes())[0]
        return str(spiffe_id_of(leaf)), leaf.serial_number

    identity.refresh(NOW)
    first = served()
    assert first[0] == "spiffe://cluster.local/bulwark/bundle-endpoint"
    assert stat.S_IMODE((tmp_path / "ep" / "svid-key.pem").stat().st_mode) == 0o600
    identity.refresh(NOW + timedelta(hours=1))
    assert served() == first  # nothing due
    identity.refresh(NOW + timedelta(hours=12, minutes=1))
    renewed = served()
    assert renewed != first  # half of its 24 h passed
    materials.append(create_self_signed(TD, NOW))
    identity.refresh(NOW + timedelta(hours=12, minutes=2))
    leaf = load_certificates((tmp_path / "ep" / "svid.pem").read_bytes())[0]
    assert leaf.issuer == materials[-1].signing_cert.subject
    assert served() != renewed  # new material: re-issued at once


P256 = {"kty": "EC", "crv": "P-256", "x": "A" * 43, "y": "A" * 43}
GOOD = {"keys": [{"use": "jwt-svid", "kid": "k", **P256}], "spiffe_sequence": 3}
BAD = [
    ("not-json", b"{", "not JSON"),
    ("no-keys", b'{"keys": []}', "no `keys`"),
    ("keys-not-list", b'{"keys": {}}', "no `keys`"),
    ("bad-use", b'{"keys": [{"use": "enc"}]}', "x509-svid or jwt-svid"),
    ("no-use", b'{"keys": [{"kty": "EC"}]}', "x509-svid or jwt-svid"),
    ("x5c-missing", b'{"keys": [{"use": "x509-svid"}]}', "exactly one certificate"),
    ("x5c-two", b'{"keys": [{"use": "x509-svid", "x5c": ["a", "b"]}]}', "exactly one"),
    ("x5c-garbage", b'{"keys": [{"use": "x509-svid", "x5c": ["bm90IGEgY2VydA=="]}]}', "does not parse"),
    ("too-big", b" " * (1 << 21), "larger than"),
    ("not-utf8", b"\xff\xfe", "not JSON"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "data", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_foreign_bundles_are_refused(name: str, data: bytes, words: str) -> None:
    with pytest.raises(InvalidBundle, match=words):
        foreign_bundle(data)


def test_store_keeps_one_private_file_per_domain(tmp_path: Path) -> None:
    store = FederationStore(tmp_path)
    other = TrustDomain("other.test")
    assert store.get(other) is None and store.all() == {}
    store.put(other, foreign_bundle(json.dumps(GOOD).encode()))
    kept = store.get(other)
    assert kept is not None and kept.document() == GOOD
    assert stat.S_IMODE(store.path(other).stat().st_mode) == 0o600
    assert json.loads(store.all()["other.test"]) == GOOD
