"""Who is asking: the identity an authenticator establishes for one request."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypedDict

from ca_server.errors import AuthenticationError
from certs.spiffe_id import SpiffeId


@dataclass(frozen=True, slots=True, kw_only=True)
class Caller:
    """An authenticated caller. `authenticator` names the method that vouched for it."""

    spiffe_id: SpiffeId
    namespace: str
    service_account: str
    authenticator: str  # "client-cert", "jwt", "tokenreview"
    subject: str = ""  # token `sub` or client certificate URI
    pod_name: str = ""
    pod_uid: str = ""
    node_name: str = ""  # the node the token is bound to, when the API server says
    cluster_id: str = ""
    peer: str = ""
    expires_at: float | None = None  # epoch seconds the credential stops being valid

    def record_fields(self) -> CallerRecord:
        """What the issuance record keeps of the caller, for any kind of issued credential."""
        return CallerRecord(
            spiffe_id=str(self.spiffe_id),
            namespace=self.namespace,
            service_account=self.service_account,
            authenticator=self.authenticator,
            subject=self.subject,
            pod_name=self.pod_name,
            pod_uid=self.pod_uid,
            peer=self.peer,
            cluster_id=self.cluster_id,
        )


class CallerRecord(TypedDict):
    """The caller's columns of `ca_server.record.entry.IssuedCertificate`."""

    spiffe_id: str
    namespace: str
    service_account: str
    authenticator: str
    subject: str
    pod_name: str
    pod_uid: str
    peer: str
    cluster_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestCredentials:
    """What a request carried that authenticators may look at; secrets never logged."""

    bearer_token: str | None
    client_cert_pem: bytes | None
    cluster_id: str
    peer: str


AUTHORIZATION_HEADER = "authorization"
CLUSTER_ID_HEADER = "clusterid"  # istio-agent's ClusterID (ISTIO_META_CLUSTER_ID)
MAX_SHOWN_CHARS = 32


def shown(value: object, limit: int = MAX_SHOWN_CHARS) -> str:
    """A short, printable rendering of caller-supplied text for an error or log line: at most
    `limit` characters of it, control and non-ASCII characters escaped, quoted."""
    text = value if isinstance(value, str) else repr(value)
    cut = text[:limit]
    safe = cut.encode("ascii", "backslashreplace").decode("ascii")
    safe = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in safe)
    return repr(safe + ("..." if len(text) > limit else ""))


def cluster_id_of(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    """The `clusterid` a call's metadata names: "" when none, or when repeated (as istiod
    reads it: no single cluster named is the CA's own)."""
    values = [v for k, v in metadata if k == CLUSTER_ID_HEADER]
    return values[0] if len(values) == 1 and isinstance(values[0], str) else ""


def bearer_token_of(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """The bearer token of a call's metadata; None when it has no `authorization` header.

    Exactly one `authorization` header of the form `Bearer <token>` is accepted: a repeated
    header (which one would win?) or another scheme is refused with `AuthenticationError`.
    """
    values = [value for key, value in metadata if key.lower() == AUTHORIZATION_HEADER]
    if not values:
        return None
    if len(values) > 1:
        raise AuthenticationError(
            f"{len(values)} 'authorization' headers: send exactly one 'Bearer <token>'"
        )
    value = values[0]
    if not isinstance(value, str):
        raise AuthenticationError("the 'authorization' header must be text")
    scheme, _, rest = value.strip().partition(" ")
    token = rest.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("the 'authorization' header must be 'Bearer <token>'")
    if len(token.split(None, 1)) > 1:  # whitespace inside (str.split's = str.isspace's)
        raise AuthenticationError("the bearer token must not contain whitespace")
    return token
