"""The issuance record's interface: every certificate is written here before the caller sees it.

Implementations (SQLite, PostgreSQL, behind `AsyncRecorder`) live in
`ca_server.record.ledger`. `await record(entry)` must return only once the entry is
durably committed; if it raises, the CA answers INTERNAL and the certificate is
never sent.

`IssuedCertificate` is the one definition of a record's fields: the table's
columns, the hashed columns (in this order), the stored row read back and the
admin API's models are all derived from it. Adding a field is one edit here
(with `since` set to the schema version that adds its column).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

X509_SVID: Final = "x509-svid"
JWT_SVID: Final = "jwt-svid"


def recorded(description: str, *, summary: bool = False, since: int = 1) -> dict[str, Any]:
    """Field metadata: its API description, whether listings show it, its schema version.

    A field added after schema version 1 is hashed only when it is non-empty, so rows
    written before it existed keep their hash.
    """
    return {"description": description, "summary": summary, "since": since}


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedCertificate:
    """One issued SVID (an X.509 leaf or a JWT-SVID), with everything an operator may ask
    about it later."""

    serial: str = field(metadata=recorded("lowercase hex serial number", summary=True))
    spiffe_id: str = field(metadata=recorded("the SPIFFE ID the certificate names", summary=True))
    namespace: str = field(metadata=recorded("the workload's Kubernetes namespace", summary=True))
    service_account: str = field(metadata=recorded("the workload's service account", summary=True))
    not_before: datetime = field(metadata=recorded("start of validity", summary=True))
    not_after: datetime = field(metadata=recorded("end of validity", summary=True))
    public_key_sha256: str = field(metadata=recorded("hex SHA-256 of the certified SPKI"))
    authenticator: str = field(metadata=recorded("how the caller was authenticated", summary=True))
    subject: str = field(
        metadata=recorded("the authenticated caller (token subject or certificate identity)")
    )
    pod_name: str = field(metadata=recorded("the caller's pod, when its token names one"))
    pod_uid: str = field(metadata=recorded("the caller's pod UID, when its token names one"))
    peer: str = field(metadata=recorded("the caller's network address"))
    cluster_id: str = field(
        metadata=recorded(
            "the cluster the request named (TokenReview: the cluster that reviewed the token, "
            "the CA's own when the request named none)",
            summary=True,
        )
    )
    csr_sha256: str = field(metadata=recorded("hex SHA-256 of the CSR"))
    issuer_serial: str = field(metadata=recorded("serial of the signing CA certificate"))
    certificate_pem: str = field(metadata=recorded("the issued certificate, PEM"))
    # Schema 3: JWT-SVIDs share the record. A JWT-SVID row has `serial` = its `jti`, no
    # certificate_pem/csr_sha256/public_key_sha256, and never the token itself: only its hash.
    kind: str = field(
        default="",
        metadata=recorded(
            "x509-svid or jwt-svid (empty on rows written before schema 3: x509-svid)",
            summary=True,
            since=3,
        ),
    )
    audiences: str = field(
        default="", metadata=recorded("a JWT-SVID's `aud`, comma-separated", since=3)
    )
    token_sha256: str = field(
        default="", metadata=recorded("hex SHA-256 of the JWT-SVID (never the token)", since=3)
    )
    key_id: str = field(
        default="", metadata=recorded("`kid` of the key that signed the JWT-SVID", since=3)
    )


class Recorder(Protocol):
    """Durable, append-only store of issued certificates, awaited on the event loop
    (`ca_server.record.ledger.AsyncRecorder` is the one the CA runs)."""

    async def record(self, entry: IssuedCertificate) -> None:
        """Return once `entry` is durably committed; raise a `RecordWriteFailed` otherwise."""
        ...
