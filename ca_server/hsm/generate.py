"""Key pairs made inside the HSM, with the attributes that keep the private half there:
`CKA_SENSITIVE` true (its value never leaves in the clear), `CKA_EXTRACTABLE` false (not even
wrapped), `CKA_PRIVATE` true (invisible before login), `CKA_TOKEN` true (persistent), and
signing as its only use. Each key gets a label and an ID; the public half is stored beside it
so the CA can read the public key back.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from ca_server.hsm.errors import HsmConfigError
from ca_server.hsm.keys import KeyInfo, read_key_info
from ca_server.hsm.token import HsmToken, describe
from ca_server.hsm.uri import Pkcs11Uri
from certs.keys import KeyType

HSM_KEY_TYPES = (KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_3072)
_CURVE_OIDS = {
    KeyType.EC_P256: bytes.fromhex("06082a8648ce3d030107"),
    KeyType.EC_P384: bytes.fromhex("06052b81040022"),
}
ID_BYTES = 8


def generate_keypair(token: HsmToken, uri: Pkcs11Uri, kind: KeyType) -> KeyInfo:
    """Make the key `uri` names (an `object` label is required; a random ID is chosen when the
    URI has none) and return what the token says about it. Refuses a label or ID in use."""
    from pkcs11 import exceptions as p11e

    if kind not in HSM_KEY_TYPES:
        raise HsmConfigError(
            f"key type {kind.value} cannot be made in the HSM: use one of "
            f"{', '.join(k.value for k in HSM_KEY_TYPES)}"
        )
    if uri.object is None:
        raise HsmConfigError(f"{uri} names no object label: add object=<label> for the new key")
    full = uri.with_key(object_label=uri.object, key_id=uri.id or secrets.token_bytes(ID_BYTES))
    try:
        token.rw_call(lambda session: _generate(session, full, kind))
    except p11e.PKCS11Error as exc:
        raise HsmConfigError(f"the HSM did not make the key {full}: {describe(exc)}") from None
    return read_key_info(token, full)


def _generate(session: Any, uri: Pkcs11Uri, kind: KeyType) -> None:
    from pkcs11 import Attribute, MechanismFlag
    from pkcs11 import KeyType as P11KeyType

    _refuse_taken(session, uri)
    assert uri.object is not None and uri.id is not None
    common = {Attribute.TOKEN: True, Attribute.LABEL: uri.object, Attribute.ID: uri.id}
    private = {
        **common,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.SIGN: True,
        Attribute.DECRYPT: False,
        Attribute.UNWRAP: False,
        Attribute.DERIVE: False,
    }
    public = {**common, Attribute.PRIVATE: False, Attribute.VERIFY: True}
    capabilities = MechanismFlag.SIGN | MechanismFlag.VERIFY
    if kind in _CURVE_OIDS:
        params = session.create_domain_parameters(
            P11KeyType.EC, {Attribute.EC_PARAMS: _CURVE_OIDS[kind]}, local=True
        )
        params.generate_keypair(
            store=True,
            capabilities=capabilities,
            private_template=private,
            public_template=public,
        )
        return
    session.generate_keypair(
        P11KeyType.RSA,
        int(kind.value.split("-")[1]),
        store=True,
        capabilities=capabilities,
        private_template=private,
        public_template={**public, Attribute.PUBLIC_EXPONENT: b"\x01\x00\x01"},
    )


def _refuse_taken(session: Any, uri: Pkcs11Uri) -> None:
    from pkcs11 import Attribute

    for attribute, value, what in (
        (Attribute.LABEL, uri.object, f"label {uri.object!r}"),
        (Attribute.ID, uri.id, f"ID {uri.id_hex}"),
    ):
        if list(session.get_objects({attribute: value})):
            raise HsmConfigError(
                f"an object with the {what} already exists on token {uri.token!r}: choose "
                "another (keys are never overwritten)"
            )


def destroy_key(token: HsmToken, uri: Pkcs11Uri) -> None:
    """Destroy the key pair `uri` names (both halves); a key already gone is no error."""
    from pkcs11 import Attribute
    from pkcs11 import exceptions as p11e

    def destroy(session: Any) -> None:
        attrs: dict[Any, Any] = {}
        if uri.object is not None:
            attrs[Attribute.LABEL] = uri.object
        if uri.id is not None:
            attrs[Attribute.ID] = uri.id
        for obj in list(session.get_objects(attrs)):
            obj.destroy()

    try:
        token.rw_call(destroy)
    except p11e.PKCS11Error as exc:
        raise HsmConfigError(f"the HSM did not destroy {uri}: {describe(exc)}") from None


def rotation_label(base: str, now: datetime) -> str:
    """The label of a key made by new-key rotation: the configured label and a UTC stamp."""
    return f"{base}-{now.strftime('%Y%m%dT%H%M%SZ')}"


__all__ = ["HSM_KEY_TYPES", "destroy_key", "generate_keypair", "rotation_label"]
