"""`bulwark inspect --connect`: the certificate chain a TLS server presents.

The handshake trusts nothing (the point is to look at what is served, as
`openssl s_client -showcerts` does); verification happens afterwards with --root.
"""

from __future__ import annotations

import socket
import ssl

from cryptography import x509

from certs.errors import CertsError
from certs.values import parse_host_port

TIMEOUT_S = 10.0
_DER = 2  # _ssl.ENCODING_DER


class ConnectError(CertsError):
    """The server could not be reached or did not complete a TLS handshake."""


def served_chain(
    address: str, servername: str | None, *, timeout: float = TIMEOUT_S
) -> list[x509.Certificate]:
    """The certificates the server at `address` sends, in the order it sends them."""
    host, port = parse_host_port(address, "--connect", allow_port_zero=False)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    sni = servername or (None if _is_ip(host) else host)
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=sni) as tls,
        ):
            chain = _unverified_chain(tls)
    except (OSError, ssl.SSLError) as exc:
        raise ConnectError(
            f"cannot fetch the chain served at {address}: {exc}: is the server running "
            "and speaking TLS on that port?"
        ) from None
    if not chain:
        raise ConnectError(f"the server at {address} presented no certificate")
    return [x509.load_der_x509_certificate(der) for der in chain]


def _unverified_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """DER of every certificate the peer sent (public API from Python 3.13, private before)."""
    public = getattr(tls, "get_unverified_chain", None)
    if public is not None:
        return list(public())
    private = tls._sslobj.get_unverified_chain()  # type: ignore[attr-defined]
    return [c.public_bytes(_DER) for c in private or []]


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True
