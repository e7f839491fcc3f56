"""HSM keys behind pyca/cryptography's private-key interfaces.

`HsmEcKey` and `HsmRsaKey` subclass `ec.EllipticCurvePrivateKey` and `rsa.RSAPrivateKey`, so
every builder that signs (the self-signed root, CSRs, the serving certificate, the leaf DER
template) takes them as it takes a key file's key: cryptography calls `sign`, which hashes
here and signs the digest in the HSM (`CKM_ECDSA`, the raw r‖s turned into the DER X.509
wants) or signs the data there (`CKM_SHA256_RSA_PKCS`). The public key comes from the token
or the CA certificate; `private_bytes` and friends refuse, so no code path can write the key
anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding

from ca_server.hsm.errors import HsmConfigError
from ca_server.hsm.token import (
    HsmToken,
    binding,
    describe,
    find_private_key,
    find_public_key,
)
from ca_server.hsm.uri import Pkcs11Uri
from certs.keys import describe_key

# DER of the named-curve OIDs in CKA_EC_PARAMS.
_CURVES: dict[bytes, ec.EllipticCurve] = {
    bytes.fromhex("06082a8648ce3d030107"): ec.SECP256R1(),
    bytes.fromhex("06052b81040022"): ec.SECP384R1(),
}
MIN_RSA_BITS, MAX_RSA_BITS = 3072, 8192
SUPPORTED_TYPES = "EC P-256, EC P-384 or RSA 3072 to 8192 bits"
HsmPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def _refuse(what: str, uri: Pkcs11Uri) -> NoReturn:
    raise TypeError(f"the CA key {uri} lives in the HSM: {what} is not possible")


class HsmEcKey(ec.EllipticCurvePrivateKey):
    """An EC P-256/P-384 key in the HSM; `sign` runs there."""

    def __init__(self, token: HsmToken, uri: Pkcs11Uri, public: ec.EllipticCurvePublicKey) -> None:
        self.token = token
        self.uri = uri
        self._name = str(uri)
        self._public = public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.curve.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def sign(self, data: Any, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise TypeError("an HSM EC key signs ECDSA only")
        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, utils.Prehashed):
            digest = bytes(data)
        else:
            hasher = hashes.Hash(algorithm)
            hasher.update(bytes(data))
            digest = hasher.finalize()
        raw = self.token.call(
            lambda s: _ecdsa(self.token.key_object(s, self.uri, self._name), digest)
        )
        half = len(raw) // 2
        return utils.encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        _refuse("key agreement", self.uri)

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        _refuse("reading the private numbers", self.uri)

    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        _refuse("exporting the key", self.uri)

    def __copy__(self) -> HsmEcKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> HsmEcKey:
        return self

    def __reduce__(self) -> NoReturn:
        _refuse("pickling the key (a process opens its own session)", self.uri)

    def __repr__(self) -> str:
        return f"HsmEcKey({self.uri})"


class HsmRsaKey(rsa.RSAPrivateKey):
    """An RSA key in the HSM; `sign` (PKCS#1 v1.5 with SHA-2) runs there."""

    def __init__(self, token: HsmToken, uri: Pkcs11Uri, public: rsa.RSAPublicKey) -> None:
        self.token = token
        self.uri = uri
        self._name = str(uri)
        self._public = public

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    def sign(
        self,
        data: Any,
        padding: AsymmetricPadding,
        algorithm: Any,
    ) -> bytes:
        mechanism = _rsa_mechanism(padding, algorithm)
        payload = bytes(data)
        return self.token.call(
            lambda s: bytes(
                self.token.key_object(s, self.uri, self._name).sign(payload, mechanism=mechanism)
            )
        )

    def decrypt(self, ciphertext: bytes, padding: AsymmetricPadding) -> bytes:
        _refuse("decryption", self.uri)

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        _refuse("reading the private numbers", self.uri)

    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        _refuse("exporting the key", self.uri)

    def __copy__(self) -> HsmRsaKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> HsmRsaKey:
        return self

    def __reduce__(self) -> NoReturn:
        _refuse("pickling the key (a process opens its own session)", self.uri)

    def __repr__(self) -> str:
        return f"HsmRsaKey({self.uri})"


HsmKey = HsmEcKey | HsmRsaKey


def _ecdsa(key: Any, digest: bytes) -> bytes:
    return bytes(key.sign(digest, mechanism=binding().Mechanism.ECDSA))


def _rsa_mechanism(pad: AsymmetricPadding, algorithm: object) -> Any:
    Mechanism = binding().Mechanism
    if not isinstance(pad, padding.PKCS1v15):
        raise TypeError("an HSM RSA key signs with PKCS#1 v1.5 padding only")
    by_hash = {
        hashes.SHA256: Mechanism.SHA256_RSA_PKCS,
        hashes.SHA384: Mechanism.SHA384_RSA_PKCS,
        hashes.SHA512: Mechanism.SHA512_RSA_PKCS,
    }
    mechanism = by_hash.get(type(algorithm))  # type: ignore[arg-type]
    if mechanism is None:
        raise TypeError("an HSM RSA key signs with SHA-256, SHA-384 or SHA-512 only")
    return mechanism


def hsm_key(token: HsmToken, uri: Pkcs11Uri, public: object) -> HsmKey:
    """The HSM key `uri` names whose public half is `public` (from the token or the CA
    certificate): no call to the HSM until it signs."""
    if isinstance(public, ec.EllipticCurvePublicKey):
        return HsmEcKey(token, uri, public)
    if isinstance(public, rsa.RSAPublicKey):
        return HsmRsaKey(token, uri, public)
    raise HsmConfigError(f"{uri}: the certificate's key is neither EC nor RSA")


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyInfo:
    """What the token says about a private key (read at start and by `bulwark ca hsm`)."""

    uri: Pkcs11Uri  # with the label and ID the token holds
    public_key: HsmPublicKey
    sensitive: bool
    extractable: bool
    private: bool
    can_sign: bool

    @property
    def key_type(self) -> str:
        return describe_key(self.public_key)

    def weaknesses(self) -> list[str]:
        """The custody attributes that are not as Bulwark requires."""
        wrong = []
        if not self.sensitive:
            wrong.append("CKA_SENSITIVE is false")
        if self.extractable:
            wrong.append("CKA_EXTRACTABLE is true")
        if not self.private:
            wrong.append("CKA_PRIVATE is false")
        if not self.can_sign:
            wrong.append("CKA_SIGN is false")
        return wrong


def read_key_info(token: HsmToken, uri: Pkcs11Uri) -> KeyInfo:
    """The key `uri` names, its public key and attributes; an `HsmConfigError` naming the URI
    when it is missing, ambiguous or of a type the CA cannot sign with."""
    from pkcs11 import exceptions as p11e

    def read(session: Any) -> KeyInfo:
        key = find_private_key(session, uri)
        return _info(session, uri, key)

    try:
        return token.startup_call(read)
    except p11e.PKCS11Error as exc:
        raise HsmConfigError(f"cannot read the key {uri}: {describe(exc)}") from None


def _info(session: Any, uri: Pkcs11Uri, key: Any) -> KeyInfo:
    from pkcs11 import Attribute
    from pkcs11 import KeyType as P11KeyType

    label = key[Attribute.LABEL] or uri.object
    key_id = bytes(key[Attribute.ID] or b"") or uri.id
    full = Pkcs11Uri(token=uri.token, object=label or None, id=key_id or None, type="private")
    kind = key[Attribute.KEY_TYPE]
    public: HsmPublicKey
    if kind == P11KeyType.EC:
        public = _ec_public(session, full, bytes(key[Attribute.EC_PARAMS]))
    elif kind == P11KeyType.RSA:
        public = rsa.RSAPublicNumbers(
            int.from_bytes(bytes(key[Attribute.PUBLIC_EXPONENT]), "big"),
            int.from_bytes(bytes(key[Attribute.MODULUS]), "big"),
        ).public_key()
        if not MIN_RSA_BITS <= public.key_size <= MAX_RSA_BITS:
            raise HsmConfigError(
                f"{full} is an RSA {public.key_size} key; Bulwark's CA keys are {SUPPORTED_TYPES}"
            )
    else:
        name = getattr(kind, "name", str(kind))
        raise HsmConfigError(f"{full} is a {name} key; Bulwark's CA keys are {SUPPORTED_TYPES}")
    return KeyInfo(
        uri=full,
        public_key=public,
        sensitive=bool(key[Attribute.SENSITIVE]),
        extractable=bool(key[Attribute.EXTRACTABLE]),
        private=bool(key[Attribute.PRIVATE]),
        can_sign=bool(key[Attribute.SIGN]),
    )


def _ec_public(session: Any, uri: Pkcs11Uri, params: bytes) -> ec.EllipticCurvePublicKey:
    from pkcs11 import Attribute

    curve = _CURVES.get(params)
    if curve is None:
        raise HsmConfigError(
            f"{uri} is an EC key on a curve Bulwark does not sign with; its CA keys are "
            f"{SUPPORTED_TYPES}"
        )
    public = find_public_key(session, uri)
    if public is None:
        raise HsmConfigError(
            f"the token holds no public key object beside {uri}: Bulwark reads the public key "
            "from it (`bulwark ca hsm init` and `pkcs11-tool --keypairgen` store both)"
        )
    return ec.EllipticCurvePublicKey.from_encoded_point(
        curve, _unwrap_point(bytes(public[Attribute.EC_POINT]), curve)
    )


def _unwrap_point(point: bytes, curve: ec.EllipticCurve) -> bytes:
    """CKA_EC_POINT is the DER OCTET STRING of the point (some modules omit the wrapping)."""
    raw_len = 1 + 2 * ((curve.key_size + 7) // 8)
    if len(point) == raw_len:
        return point
    if point[0] == 0x04 and point[1] == raw_len:
        return point[2:]
    if point[0] == 0x04 and point[1] == 0x81 and point[2] == raw_len:
        return point[3:]
    raise HsmConfigError("the token's CKA_EC_POINT is neither a point nor its DER encoding")


def is_hsm_key(key: object) -> bool:
    return isinstance(key, (HsmEcKey, HsmRsaKey))


__all__ = [
    "SUPPORTED_TYPES",
    "HsmEcKey",
    "HsmKey",
    "HsmRsaKey",
    "KeyInfo",
    "hsm_key",
    "is_hsm_key",
    "read_key_info",
]
