"""What `bulwark cert request` says when the CA call fails: the fix, not only the symptom.

grpc reports most failures as UNAVAILABLE; its details tell apart a CA that is not there
(connection refused), a root that does not verify the CA (certificate verify failed), a
server name the CA's certificate lacks (hostname), and a connection the CA closed during the
handshake ("Socket closed"): a token sent to the client-certificate port, or a client
certificate the CA no longer accepts (its root retired, or another CA's). Renewal sent to
the token port comes back UNAUTHENTICATED "no credential". Each gets its own line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from certs.errors import CertsError
from certs.istio_files import CERT_CHAIN, ROOT_CERT
from certs.values import duration_like

TOKEN_PORT, RENEWAL_PORT = 15012, 15013  # the CA's defaults: --grpc-addr, --mtls-grpc-addr
_MAXIMUM = re.compile(r"requested TTL \d+s.*? exceeds the maximum of (\d+)s")
# OpenSSL's words for a peer that answered, but not with TLS (an HTTP port, for one).
_NOT_TLS = ("wrong_version_number", "packet_length_too_long", "http_request")


class Request(Protocol):
    """The parts of a `request_flow.Plan` the hints read."""

    @property
    def ca_addr(self) -> str: ...
    @property
    def root(self) -> Path: ...
    @property
    def server_name(self) -> str: ...
    @property
    def token_file(self) -> Path | None: ...
    @property
    def renew_from(self) -> Path | None: ...
    @property
    def ttl_text(self) -> str: ...


def rpc_message(plan: Request, exc: Any) -> str:
    """One line for a failed CreateCertificate call `exc` (a grpc.RpcError)."""
    code, details = exc.code(), exc.details() or ""
    name = getattr(code, "name", str(code))
    if name == "UNAVAILABLE":
        return f"{unavailable(plan, details)} (grpc: {details})"
    if name == "UNAUTHENTICATED":
        if plan.renew_from is not None and "no credential" in details.lower():
            return renewal_on_token_port(plan)
        what = "--token-file" if plan.token_file else "--renew-from certificate"
        return f"the CA did not accept the {what}: {details}"
    if name == "INVALID_ARGUMENT" and (maximum := _MAXIMUM.search(details)):
        most = duration_like(int(maximum.group(1)), plan.ttl_text)
        return (
            f"the CA refused --ttl {plan.ttl_text}: it issues at most {most} (its "
            f"--max-workload-cert-ttl); ask for {most} or less. The CA said: {details}"
        )
    if name == "DEADLINE_EXCEEDED":
        return (
            f"the CA at {plan.ca_addr} did not answer in time ({details}): is it overloaded, "
            "or is --ca-addr not the CA's gRPC port?"
        )
    return f"the CA refused the request ({name}): {details}"


def unavailable(plan: Request, details: str) -> str:
    """What went wrong, and its fix, for an UNAVAILABLE call, from grpc's details."""
    low = details.lower()
    if "hostname" in low or ("name" in low and "verif" in low):
        return (
            f"the CA's certificate at {plan.ca_addr} does not carry --server-name "
            f"{plan.server_name!r}: pass one of its DNS names (`bulwark inspect --connect "
            f"{plan.ca_addr}` shows them)"
        )
    if "certificate_verify_failed" in low or "certificate verify failed" in low:
        return (
            f"--root {plan.root} does not verify the certificate of the CA at {plan.ca_addr}: "
            f"pass the CA's current {ROOT_CERT} (an old copy may hold only a root the CA has "
            "replaced or retired)"
        )
    if any(word in low for word in _NOT_TLS):
        return (
            f"{plan.ca_addr} does not answer TLS: is it the CA's admin port (15014 by default)? "
            f"Certificates come from its gRPC port (--grpc-addr, {TOKEN_PORT} by default)"
        )
    if "socket closed" in low or "connection reset" in low or "handshake" in low:
        return closed_in_handshake(plan)
    hint = f"cannot reach the CA at {plan.ca_addr}: is the CA running? check --ca-addr"
    if plan.renew_from is not None and _port(plan.ca_addr) == TOKEN_PORT:
        hint += f"; renewal with --renew-from goes to the CA's mTLS port, {RENEWAL_PORT} by default"
    return hint


def closed_in_handshake(plan: Request) -> str:
    """The CA ended the TLS handshake: it wanted a client certificate, or not this one."""
    if plan.renew_from is None:
        return (
            f"the CA at {plan.ca_addr} closed the connection during the TLS handshake: that is "
            f"probably its client-certificate port (--mtls-grpc-addr, {RENEWAL_PORT} by default), "
            f"which takes no token; send --token-file to its token port (--grpc-addr, "
            f"{TOKEN_PORT} by default){_instead(plan.ca_addr, RENEWAL_PORT, TOKEN_PORT)}"
        )
    problem = renewal_chain_problem(plan)
    why = (
        f", which does not verify against --root ({problem})"
        if problem
        else " (was it issued by this CA, under a root the CA still trusts?)"
    )
    return (
        f"the CA at {plan.ca_addr} closed the connection during the TLS handshake: it did not "
        f"accept the client certificate in --renew-from {plan.renew_from}{why}. A certificate "
        "whose root was retired, or another CA's, cannot renew: get a new one with --token-file"
    )


def renewal_on_token_port(plan: Request) -> str:
    """`--renew-from` sent to a port that asks for no client certificate."""
    return (
        f"the CA at {plan.ca_addr} did not ask for a client certificate: that is its token port. "
        f"Renewal with --renew-from goes to its mTLS port (--mtls-grpc-addr, {RENEWAL_PORT} by "
        f"default){_instead(plan.ca_addr, TOKEN_PORT, RENEWAL_PORT)}"
    )


def _instead(addr: str, default: int, other: int) -> str:
    """`: --ca-addr HOST:other` when `addr` is on the `default` port, else ''."""
    host, _, port = addr.rpartition(":")
    return f": --ca-addr {host}:{other}" if port == str(default) else ""


def renewal_chain_problem(
    plan: Request, now: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> str:
    """Why the --renew-from chain does not verify against --root, or '' (also when unsure)."""
    from certs.cli.diagnose import explain
    from certs.pem import load_certificates
    from certs.verify import verify_svid

    assert plan.renew_from is not None
    try:
        chain = load_certificates((plan.renew_from / CERT_CHAIN).read_bytes())
        roots = load_certificates(plan.root.read_bytes())
    except (OSError, CertsError):
        return ""
    when = now()
    try:
        verify_svid(chain, roots, now=when)
    except CertsError as exc:
        return explain(chain, roots, when) or str(exc)
    return ""


def _port(addr: str) -> int | None:
    port = addr.rpartition(":")[2]
    return int(port) if port.isdigit() else None
