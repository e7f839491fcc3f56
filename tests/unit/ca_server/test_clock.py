"""A CA whose clock is behind its own CA certificates (issue 22 item 8), with a fake clock:
the signer answers UNAVAILABLE naming the clock, logs it once per change, and `/readyz`
turns not-ready with the reason."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from ca_server.authority.clock import ClockWatch, clock_problem, valid_from
from ca_server.authority.material import CaMaterial, create_self_signed
from ca_server.authority.refresh import ReloadHealth
from ca_server.process.readiness import Readiness
from certs.keys import generate_key
from certs.spiffe_id import TrustDomain
from tests.support.broken import csr_pem
from tests.support.policy_cases import ME
from tests.support.testca import Aborted, TestCa

TD = TrustDomain("cluster.local")


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_a_signer_behind_its_root_answers_unavailable_naming_the_clock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = TestCa.create(tmp_path)
    start, _ = valid_from(ca.material)
    clock = Clock(start - timedelta(hours=2))
    behind = TestCa.with_material(ca.config, ca.material, ca.issuer, clock=clock)
    csr = csr_pem(generate_key(), uris=(ME,))
    caplog.set_level(logging.INFO)
    for _ in range(3):
        with pytest.raises(Aborted) as refused:
            behind.issue(csr, token=behind.mint())
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        assert "clock" in refused.value.details and "retry later" in refused.value.details
    assert behind.recorder.entries == []
    said = [r for r in caplog.records if "before the validity of its own root" in r.message]
    assert len(said) == 1, "logged once, not per request"
    assert "2h later" in said[0].message and "NTP" in said[0].message
    assert said[0].levelno == logging.ERROR

    clock.now = start + timedelta(seconds=1)  # NTP fixed it
    chain = behind.issue(csr, token=behind.mint())
    assert len(chain) == 2 and len(behind.recorder.entries) == 1
    assert any("validity again" in r.message for r in caplog.records)


def test_the_latest_start_of_the_signing_path_counts(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    root = create_self_signed(TD, now - timedelta(days=1))
    key = generate_key()
    later = now + timedelta(minutes=7)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster.local")])
    intermediate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(root.signing_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(later)
        .not_valid_after(later + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(root.signing_key, hashes.SHA256())
    )
    material = CaMaterial(
        signing_cert=intermediate,
        signing_key=key,
        chain=(intermediate,),
        roots=root.roots,
        source="test",
    )
    assert valid_from(material) == (intermediate.not_valid_before_utc, "signing certificate")
    problem = clock_problem(material, now)
    assert problem is not None and "its own signing certificate" in problem
    assert clock_problem(material, later) is None


def test_readyz_is_not_ready_while_the_clock_is_behind() -> None:
    class Workers:
        def readiness(self) -> tuple[bool, str]:
            return True, "1 worker(s) serving"

    material = create_self_signed(TD, datetime.now(UTC) + timedelta(hours=2))
    clock = Clock(datetime.now(UTC))
    watch = ClockWatch()
    readiness = Readiness(Workers(), ReloadHealth(0.0))
    readiness.add(lambda: watch.check(material, clock()))
    ready, detail = readiness()
    assert not ready
    assert "this CA's clock" in detail and "NTP" in detail and "1 worker(s) serving" in detail
    clock.now += timedelta(hours=3)
    assert readiness() == (True, "1 worker(s) serving; CA material current")
