"""`--istiod-cert-*` flags (issue #15 item 4): mistakes stop the CA with exit 2 and one line;
the renewal check reads whatever a Secret holds without raising."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ca_server.authority.material import DirectoryKeyStore, load_or_create
from ca_server.kube.istiod_cert import issue, renewal_reason
from ca_server.kube.settings import ISTIOD_SERVICE_NAMES
from certs.spiffe_id import TrustDomain
from tests.support.ca_process import serve_once


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--istiod-cert-secret", "istio-system/istiod-tls"), "needs --kubeconfig or --kube-in-cluster"),
        (("--kubeconfig", "/nonexistent", "--istiod-cert-secret", "istiod-tls"), "is not NAMESPACE/NAME"),
        (("--kubeconfig", "/nonexistent", "--istiod-cert-secret", "a/b",
          "--istiod-cert-dns-names", "Bad_Name"), "is not a lowercase DNS name"),
        (("--kubeconfig", "/nonexistent", "--istiod-cert-secret", "a/b",
          "--istiod-cert-ttl", "10m"), "between 1h and 90d"),
    ],
)  # fmt: skip
def test_bad_flags_exit_2_with_one_line(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = serve_once(tmp_path / "ca", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


GARBAGE = [
    {},
    {"tls.crt": "!!!", "tls.key": "", "ca.crt": ""},
    {"tls.crt": base64.b64encode(b"not pem").decode(), "tls.key": "", "ca.crt": ""},
    {"tls.crt": base64.b64encode(b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n").decode()},
]  # fmt: skip


@pytest.mark.parametrize("data", GARBAGE)
def test_unreadable_secret_is_reissued_not_raised(tmp_path: Path, data: dict[str, str]) -> None:
    now = datetime.now(UTC)
    material = load_or_create(DirectoryKeyStore(tmp_path), TrustDomain("cluster.local"), now)
    assert renewal_reason(data, material, ISTIOD_SERVICE_NAMES, now) == "missing or unreadable"


def test_mismatched_key_is_reissued(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    material = load_or_create(DirectoryKeyStore(tmp_path), TrustDomain("cluster.local"), now)
    one = issue(material, ISTIOD_SERVICE_NAMES, timedelta(hours=2), now)
    other = issue(material, ISTIOD_SERVICE_NAMES, timedelta(hours=2), now)
    assert renewal_reason(one, material, ISTIOD_SERVICE_NAMES, now) is None
    mixed = {**one, "tls.key": other["tls.key"]}
    assert (
        renewal_reason(mixed, material, ISTIOD_SERVICE_NAMES, now)
        == "tls.key does not match tls.crt"
    )
