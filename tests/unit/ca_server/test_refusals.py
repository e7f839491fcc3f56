"""Errors know their gRPC status and refusal reason; `@refusals` answers for every servicer.

The table pins what each class of `ca_server.errors` answers and how it is counted; the
label set of `bulwark_ca_refusals_total` is computed from those classes, and no error class
anywhere in the CA brings a reason outside it. An exception no class describes (a bug: here
a record writer raising something unexpected) is answered INTERNAL with a generic message,
logged with its traceback under the servicer's logger, and counted as `internal`.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

import ca_server
from ca_server import errors
from ca_server.assembly import identity_service
from ca_server.authn.plan import build_authentication
from ca_server.errors import REFUSAL_REASONS, CaError
from ca_server.issuance.refusals import UNEXPECTED
from ca_server.logs import CaEventLog
from ca_server.metrics import CaMetrics
from ca_server.record.entry import IssuedCertificate
from ca_server.spiffe.services import SpiffeServices
from protos.bulwark.v1 import identity_pb2
from tests.support import broken
from tests.support.testca import Aborted, FakeContext, MemoryRecorder, TestCa

ME = "spiffe://cluster.local/ns/demo/sa/frontend"
SECRET = "row 7 of table secret_things"  # what a bug's message may hold: never sent

S = grpc.StatusCode
TABLE = [
    (errors.CaError, S.INTERNAL, "internal", None),
    (errors.AuthenticationError, S.UNAUTHENTICATED, "authentication", None),
    (errors.ImpersonationRefused, S.UNAUTHENTICATED, "authentication", None),
    (errors.UpstreamUnavailable, S.UNAVAILABLE, "authentication", None),
    (errors.IdentityMismatch, S.PERMISSION_DENIED, "csr_policy", None),
    (errors.InvalidRequest, S.INVALID_ARGUMENT, "bad_request", None),
    (errors.CsrRejected, S.INVALID_ARGUMENT, "csr_policy", "CSR_ERROR"),
    (errors.TtlTooLong, S.INVALID_ARGUMENT, "bad_request", "TTL_ERROR"),
    (errors.Overloaded, S.RESOURCE_EXHAUSTED, "overload", None),
    (errors.OutOfDescriptors, S.UNAVAILABLE, "overload", None),
    (errors.RecordWriteFailed, S.INTERNAL, "record_failure", "UNKNOWN"),
    (errors.CaNotReady, S.INTERNAL, "internal", "CA_NOT_READY"),
    (errors.ClockBehind, S.UNAVAILABLE, "internal", "CA_NOT_READY"),
    (errors.SigningFailed, S.INTERNAL, "internal", "CERT_GEN_ERROR"),
]


@pytest.mark.parametrize(("cls", "code", "reason", "sign_error"), TABLE, ids=lambda v: str(v))
def test_each_error_knows_its_status_and_reason(
    cls: type[CaError], code: grpc.StatusCode, reason: str, sign_error: str | None
) -> None:
    assert (cls.code, cls.reason, cls.sign_error) == (code, reason, sign_error)


def test_the_refusal_label_set_is_computed_from_the_error_classes() -> None:
    """Every reason once, in the order the web view lists them, `internal` last."""
    assert REFUSAL_REASONS == (
        "authentication",
        "csr_policy",
        "bad_request",
        "overload",
        "record_failure",
        "internal",
    )


def _subclasses(root: type[CaError]) -> Iterator[type[CaError]]:
    for cls in root.__subclasses__():
        yield cls
        yield from _subclasses(cls)


def test_no_error_class_of_the_ca_brings_a_reason_outside_the_label_set() -> None:
    for module in pkgutil.walk_packages(ca_server.__path__, "ca_server."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    found = {cls.__qualname__: cls.reason for cls in _subclasses(CaError)}
    assert {"CsrParseError", "IdentityExtractionError", "UndecodableRequest", "BadAudience"} <= set(
        found
    )
    assert {name: r for name, r in found.items() if r not in REFUSAL_REASONS} == {}


class BuggyRecorder(MemoryRecorder):
    """A record writer with a bug: it raises something no CaError describes."""

    async def record(self, entry: IssuedCertificate, *, within: float | None = None) -> None:
        raise KeyError(SECRET)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa.create(tmp_path_factory.mktemp("refusals"))


def _assert_generic_internal(
    err: Aborted, caplog: pytest.LogCaptureFixture, logger: str, method: str
) -> None:
    assert (err.code, err.details) == (S.INTERNAL, UNEXPECTED.public_message)
    assert SECRET not in err.details
    (bug,) = [r for r in caplog.records if r.name == logger]
    assert bug.levelno == logging.ERROR and bug.exc_info is not None
    assert bug.getMessage() == f"unexpected error in {method}"
    (event,) = [r for r in caplog.records if r.name == "ca_server.events"]
    assert "reason=internal" in event.getMessage() and SECRET not in event.getMessage()


def test_a_bug_in_create_certificate_is_internal_generic_logged_and_counted(
    base: TestCa, caplog: pytest.LogCaptureFixture
) -> None:
    ca = TestCa.with_material(base.config, base.material, base.issuer, recorder=BuggyRecorder())
    with caplog.at_level(logging.INFO), pytest.raises(Aborted) as err:
        ca.issue(broken.csr_pem(broken.good_key(), uris=(ME,)), token=ca.mint())
    _assert_generic_internal(err.value, caplog, "ca_server.issuance.service", "CreateCertificate")
    assert ca.metric("bulwark_ca_refusals_total", reason="internal", code="INTERNAL") == 1
    assert ca.metric("citadel_server_success_cert_issuance_count") == 0


def test_a_bug_in_mint_jwt_svid_is_internal_generic_logged_and_counted(
    base: TestCa, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    SpiffeServices(base.config, lambda: base.material).prepare()
    registry = CollectorRegistry()
    service = identity_service(
        base.config,
        lambda: base.material,
        authentication=build_authentication(base.config, lambda: base.material),
        recorder=BuggyRecorder(),
        metrics=CaMetrics(registry),
        events=CaEventLog(logging.getLogger("ca_server.events")),
    )
    context = FakeContext(metadata=[("authorization", f"Bearer {base.mint()}")])
    request = identity_pb2.MintJWTSVIDRequest(audience=["backend"])
    with caplog.at_level(logging.INFO), pytest.raises(Aborted) as err:
        asyncio.run(service.MintJWTSVID(request, context))  # type: ignore[arg-type]
    _assert_generic_internal(err.value, caplog, "ca_server.spiffe.jwtsvid.service", "MintJWTSVID")
    labels = {"reason": "internal", "code": "INTERNAL", "cluster": "Kubernetes"}
    assert registry.get_sample_value("bulwark_ca_refusals_total", labels) == 1
