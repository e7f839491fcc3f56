"""What to tell an operator when the CA refuses the agent or cannot be verified.

`explain` turns a CA error into a hint naming the setting to change: the token
file that was missing, the DNS names the CA's certificate carries when the
name check failed (`ISTIOD_SAN`/`CA_ADDR`), both trust domains when they
differ. Diagnoses run once per distinct error (the caller caches them).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import re
import socket
import sys
from typing import Any

import grpc
from cryptography import x509

from agent.config import AgentConfig, split_host_port
from agent.errors import ConfigError
from agent.upstream.caclient import DEFINITIVE
from certs.values import exact_duration

log = logging.getLogger(__name__)

_HOSTNAME_FAILURE = re.compile(r"hostname verification|peer name|name mismatch", re.IGNORECASE)
_CALLER_ID = re.compile(r"the caller is spiffe://([^/\s]+)/")
# The CA ended the TLS handshake: it wanted a client certificate, or not the one sent.
_CLOSED_IN_HANDSHAKE = re.compile(r"socket closed|connection reset", re.IGNORECASE)
_TTL_MAXIMUM = re.compile(r"requested TTL \d+s.*? exceeds the maximum of (\d+)s")
FETCH_TIMEOUT_S = 3.0


async def explain(
    code: grpc.StatusCode, details: str, config: AgentConfig, *, token_missing: bool
) -> str:
    """A hint (starting with "; ") for the CA error `code`/`details`, or ""."""
    if code == grpc.StatusCode.UNAUTHENTICATED and token_missing:
        return (
            f"; the agent sent no token: the token file {config.token_path} does not exist or "
            "is empty (set BULWARK_TOKEN_PATH or --token-path)"
        )
    if code == grpc.StatusCode.UNAVAILABLE and _HOSTNAME_FAILURE.search(details):
        names = await ca_dns_names(config.ca_addr)
        shown = ", ".join(names) if names else "none could be read"
        return (
            f"; the CA's certificate does not carry the name {config.ca_server_name!r} "
            f"(its DNS names: {shown}): set ISTIOD_SAN to one of them, or CA_ADDR to a host "
            "name it carries"
        )
    if code == grpc.StatusCode.UNAVAILABLE and _CLOSED_IN_HANDSHAKE.search(details):
        return closed_in_handshake(details, config)
    maximum = _TTL_MAXIMUM.search(details)
    if code == grpc.StatusCode.INVALID_ARGUMENT and maximum:
        most = exact_duration(int(maximum.group(1)))
        return (
            f"; SECRET_TTL asks for {exact_duration(config.secret_ttl.total_seconds())} and the "
            f"CA issues at most {most} (its --max-workload-cert-ttl): set SECRET_TTL to {most} "
            "or less"
        )
    match = _CALLER_ID.search(details)
    if code in DEFINITIVE and match and match.group(1) != config.trust_domain:
        return (
            f"; your TRUST_DOMAIN is {config.trust_domain}, the CA's is {match.group(1)}: "
            f"set TRUST_DOMAIN={match.group(1)} (or run the CA with --trust-domain "
            f"{config.trust_domain})"
        )
    if code in DEFINITIVE:
        return "; the CA refused this request, so the agent asks again only at its longest backoff"
    return ""


def closed_in_handshake(details: str, config: AgentConfig) -> str:
    """The CA closed the connection in the handshake: at the address that took the client
    certificate (PROV_CERT), that certificate; at CA_ADDR, a port that wants one."""
    mtls = config.mtls_ca_addr
    if config.prov_cert_dir is not None and mtls and f":{mtls.rpartition(':')[2]}:" in details:
        return (
            f"; the CA at {mtls} closed the connection during the TLS handshake: it did not "
            f"accept the client certificate in PROV_CERT {config.prov_cert_dir} (issued under "
            "a root it has retired since, or by another CA?): replace it, or remove PROV_CERT "
            "so the agent authenticates with its token"
        )
    return (
        f"; the CA at {config.ca_addr} closed the connection during the TLS handshake: "
        "CA_ADDR is probably its client-certificate port (15013 by default), which takes no "
        "token: point CA_ADDR at its token port (15012 by default), and BULWARK_MTLS_CA_ADDR "
        "at 15013"
    )


async def ca_dns_names(addr: str) -> list[str]:
    """The DNS names of the certificate the CA at `addr` presents, fetched without verifying."""
    try:
        host, port = split_host_port(addr, what="CA_ADDR")
    except ConfigError:
        return []
    try:
        der = await asyncio.wait_for(
            asyncio.to_thread(_fetch_leaf_der, host, port), FETCH_TIMEOUT_S + 1
        )
        cert = x509.load_der_x509_certificate(der)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return list(sans.get_values_for_type(x509.DNSName))
    except (OSError, TimeoutError, ValueError, ImportError, x509.ExtensionNotFound) as exc:
        log.info("cannot read the CA certificate's names from %s: %s", addr, exc)
        return []


def _fetch_leaf_der(host: str, port: int) -> bytes:
    """One TLS handshake (no verification: we only read names) and the peer's leaf in DER."""
    ssl = _load_ssl()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, port), timeout=FETCH_TIMEOUT_S) as raw,
        context.wrap_socket(raw, server_hostname=host or None) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise ValueError("the CA presented no certificate")
    return bytes(der)


def _load_ssl() -> Any:
    """Python's ssl module, which `python -m agent` marks missing to save memory.

    Only this diagnosis needs it, once, on a misconfigured agent.
    """
    if sys.modules.get("ssl", False) is None:
        del sys.modules["ssl"]
    return importlib.import_module("ssl")
