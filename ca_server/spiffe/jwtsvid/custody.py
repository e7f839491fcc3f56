"""JWT-SVID signing keys made inside the CA's HSM token (`--jwt-keys-in-hsm`).

The key file then holds each key's `pkcs11:` URI and public key (`JwtKey.in_hsm`); the
supervisor makes new keys in the token and destroys those no bundle publishes any more, and
every process signs through its own session (`resolver`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric import ec

from ca_server.authority.custody import HsmCustody, KeyCustody
from ca_server.spiffe.jwtsvid.keyset import (
    JwtKey,
    JwtKeyPolicy,
    KeyResolver,
    new_key,
    resolve_pem,
)
from certs.keys import KeyType, public_key_pem

LABEL_PREFIX = "bulwark-jwt-"


def resolver(custody: KeyCustody) -> KeyResolver:
    """How this process turns a key-file entry into the key that signs it."""
    if not isinstance(custody, HsmCustody):
        return resolve_pem

    def resolve(entry: JwtKey) -> ec.EllipticCurvePrivateKey:
        return signing_key(custody, entry)

    return resolve


def signing_key(custody: HsmCustody, entry: JwtKey) -> ec.EllipticCurvePrivateKey:
    """The signing key of an entry: its PEM, or its key in the token (no HSM call until it
    signs)."""
    from ca_server.hsm.keys import HsmEcKey, hsm_key
    from ca_server.hsm.uri import parse

    if not entry.in_hsm:
        return entry.private_key()
    key = hsm_key(custody.token, parse(entry.private_pem.decode("ascii")), entry.public_key())
    assert isinstance(key, HsmEcKey)
    return key


def maker(custody: HsmCustody) -> Callable[[datetime, JwtKeyPolicy], JwtKey]:
    """`plan`'s key factory: an ES256 key made inside the token, labelled
    `bulwark-jwt-<kid>`."""

    def make(active_from: datetime, policy: JwtKeyPolicy) -> JwtKey:
        from ca_server.hsm.generate import generate_keypair
        from ca_server.hsm.uri import Pkcs11Uri

        made = new_key(active_from, policy)  # its kid and timeline; its software key is dropped
        uri = Pkcs11Uri(token=custody.configured.token, object=f"{LABEL_PREFIX}{made.kid}")
        info = generate_keypair(custody.token, uri, KeyType.EC_P256)
        return replace(
            made, private_pem=str(info.uri).encode(), public_pem=public_key_pem(info.public_key)
        )

    return make


def destroy(custody: HsmCustody, entry: JwtKey) -> None:
    """Remove a key this CA made in the token once no bundle carries it any more."""
    from ca_server.hsm.generate import destroy_key
    from ca_server.hsm.uri import parse

    if entry.in_hsm:
        destroy_key(custody.token, parse(entry.private_pem.decode("ascii")))


__all__ = ["LABEL_PREFIX", "destroy", "maker", "resolver", "signing_key"]
