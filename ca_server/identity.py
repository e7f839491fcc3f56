"""Who is asking: the identity an authenticator establishes for one request."""

from __future__ import annotations

from dataclasses import dataclass

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
    cluster_id: str = ""
    peer: str = ""
    expires_at: float | None = None  # epoch seconds the credential stops being valid


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestCredentials:
    """What a request carried that authenticators may look at; secrets never logged."""

    bearer_token: str | None
    client_cert_pem: bytes | None
    cluster_id: str
    peer: str
