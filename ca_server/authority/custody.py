"""Where the CA's signing keys live, and what a store writes for one.

    FileCustody   the key is a PEM file (0600) next to its certificate: `<stem>.pem`
    HsmCustody    the key is in a PKCS#11 token; stores keep only its URI, `<stem>.uri`
                  (`pkcs11:token=...;object=...;id=...`), which names but does not hold it

Every store of CA material (the data dir, `istio-ca-secret`, the CA slots, a plugged-in
`cacerts` directory, the pipe to the workers) writes `encode(key)` and reads `decode(...)`,
so the same stores serve both custodies. With an HSM a stolen data dir, Secret or backup
holds certificates and URIs, never a key.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, cast

from cryptography import x509

from ca_server.errors import ConfigError
from certs.errors import CertsError
from certs.keys import (
    KeyType,
    PrivateKey,
    PublicKey,
    describe_key,
    generate_key,
    load_private_key,
    private_key_pem,
    spki_der,
)

if TYPE_CHECKING:
    from ca_server.hsm.keys import KeyInfo
    from ca_server.hsm.token import HsmToken
    from ca_server.hsm.uri import Pkcs11Uri

PEM_SUFFIX = ".pem"
URI_SUFFIX = ".uri"


@dataclass(frozen=True, slots=True)
class StoredKey:
    """What a store writes for a key: a name suffix, the bytes and the file mode."""

    suffix: str
    data: bytes
    mode: int


class KeyCustody(Protocol):
    """How this CA keeps signing keys (see the module docstring)."""

    kind: str  # "file" or "pkcs11"

    def encode(self, key: PrivateKey) -> StoredKey: ...

    def decode(
        self, blobs: Mapping[str, bytes], stem: str, public_key: PublicKey, where: str
    ) -> PrivateKey:
        """The key stored as `stem` + suffix in `blobs`, checked against `public_key` (the
        certificate's); a ConfigError naming `where` when it is missing or does not match."""
        ...

    def initial_key(self) -> PrivateKey:
        """The key of a self-signed root made on first start."""
        ...

    def new_key(self, now: datetime) -> PrivateKey:
        """A fresh key for new-key rotation's prepared CA."""
        ...


class FileCustody:
    """Keys as unencrypted PKCS#8 PEM, written 0600 (the default, as Istio keeps them)."""

    kind = "file"

    def encode(self, key: PrivateKey) -> StoredKey:
        return StoredKey(PEM_SUFFIX, private_key_pem(key), 0o600)

    def decode(
        self, blobs: Mapping[str, bytes], stem: str, public_key: PublicKey, where: str
    ) -> PrivateKey:
        pem = blobs.get(stem + PEM_SUFFIX)
        if pem is None:
            if stem + URI_SUFFIX in blobs:
                raise ConfigError(
                    f"the CA key of {where} is in an HSM ({stem}{URI_SUFFIX}): start the CA with "
                    "--ca-key pkcs11:... and --pkcs11-module"
                )
            raise ConfigError(f"{where} holds no {stem}{PEM_SUFFIX}")
        try:
            key = load_private_key(pem)
        except (ValueError, TypeError, CertsError) as exc:
            raise ConfigError(
                f"{where} {stem}{PEM_SUFFIX} does not hold a readable unencrypted private key"
            ) from exc
        _check_match(key, public_key, f"{where} {stem}{PEM_SUFFIX}")
        return key

    def initial_key(self) -> PrivateKey:
        return generate_key(KeyType.EC_P256)

    def new_key(self, now: datetime) -> PrivateKey:
        return generate_key(KeyType.EC_P256)


FILE_CUSTODY = FileCustody()


class HsmCustody:
    """Keys in one PKCS#11 token. `configured` (`--ca-key`) names the key of a CA made here
    and the token every key must be on; rotation makes new keys on it, labelled after it.

    In the supervisor (`verify=True`) each key is read from the token once: it must exist, be
    of a type the CA signs with, keep its custody attributes and match its certificate. A
    worker (`verify=False`) trusts the supervisor's checks and makes no HSM call until it signs.
    """

    kind = "pkcs11"

    def __init__(self, token: HsmToken, configured: Pkcs11Uri, *, verify: bool = True) -> None:
        self.token = token
        self.configured = configured
        self._verify = verify
        self._infos: dict[str, KeyInfo] = {}
        self._lock = threading.Lock()

    def encode(self, key: PrivateKey) -> StoredKey:
        from ca_server.hsm.keys import HsmEcKey, HsmRsaKey

        if not isinstance(key, (HsmEcKey, HsmRsaKey)):
            raise ConfigError(
                "a CA key outside the HSM cannot be stored by a CA whose keys are in the HSM"
            )
        return StoredKey(URI_SUFFIX, str(key.uri).encode() + b"\n", 0o644)

    def decode(
        self, blobs: Mapping[str, bytes], stem: str, public_key: PublicKey, where: str
    ) -> PrivateKey:
        from ca_server.hsm.errors import HsmConfigError
        from ca_server.hsm.uri import parse

        if stem + PEM_SUFFIX in blobs:
            raise ConfigError(
                f"{where} holds a private key file {stem}{PEM_SUFFIX}, but --ca-key names a key "
                f"in the HSM ({self.configured}): a key that was ever on disk is not an HSM key; "
                f"remove {stem}{PEM_SUFFIX} (and use a CA made with the HSM key)"
            )
        raw = blobs.get(stem + URI_SUFFIX)
        try:
            uri = parse(raw.decode("utf-8", "replace").strip()) if raw else self.configured
        except HsmConfigError as exc:
            raise HsmConfigError(
                f"{where} {stem}{URI_SUFFIX} does not hold a usable key URI: {exc}"
            ) from None
        if uri.token != self.configured.token:
            raise ConfigError(
                f"{where} names a key on token {uri.token!r} but --ca-key names token "
                f"{self.configured.token!r}: one CA uses one token"
            )
        return self.key(uri, public_key, where=where)

    def key(self, uri: Pkcs11Uri, public_key: PublicKey, *, where: str) -> PrivateKey:
        """The HSM key `uri` names, for a certificate whose key is `public_key`."""
        from ca_server.hsm.keys import hsm_key

        if not self._verify:
            return hsm_key(self.token, uri, public_key)
        info = self.info(uri)
        _check_match_spki(
            spki_der(info.public_key), spki_der(public_key), f"the HSM key {info.uri} ({where})"
        )
        return hsm_key(self.token, info.uri, info.public_key)

    def info(self, uri: Pkcs11Uri) -> KeyInfo:
        """What the token says about `uri`, read once and checked for custody."""
        from ca_server.hsm.errors import HsmConfigError
        from ca_server.hsm.keys import read_key_info

        with self._lock:
            info = self._infos.get(str(uri))
            if info is None:
                info = read_key_info(self.token, uri)
                weak = info.weaknesses()
                if weak:
                    raise HsmConfigError(
                        f"{info.uri} may leave the HSM or cannot sign: {', '.join(weak)}; make "
                        "a key with `bulwark ca hsm init` (docs/HSM.md lists the attributes)"
                    )
                self._infos[str(uri)] = self._infos[str(info.uri)] = info
            return info

    def initial_key(self) -> PrivateKey:
        from ca_server.hsm.keys import hsm_key

        info = self.info(self.configured)
        return hsm_key(self.token, info.uri, info.public_key)

    def new_key(self, now: datetime) -> PrivateKey:
        from ca_server.hsm.generate import generate_keypair, rotation_label
        from ca_server.hsm.keys import hsm_key
        from ca_server.hsm.uri import Pkcs11Uri

        base = self.info(self.configured)
        label = rotation_label(base.uri.object or "bulwark-ca", now)
        uri = Pkcs11Uri(token=self.configured.token, object=label, type="private")
        info = generate_keypair(self.token, uri, _key_type(base))
        with self._lock:
            self._infos[str(info.uri)] = info
        return hsm_key(self.token, info.uri, info.public_key)


def _key_type(info: KeyInfo) -> KeyType:
    """Rotation keeps the configured key's type."""
    return {"ECDSA P-256": KeyType.EC_P256, "ECDSA P-384": KeyType.EC_P384}.get(
        info.key_type, KeyType.RSA_3072
    )


def _check_match(key: PrivateKey, public_key: PublicKey, what: str) -> None:
    _check_match_spki(spki_der(key.public_key()), spki_der(public_key), what)


def _check_match_spki(have: bytes, want: bytes, what: str) -> None:
    if have != want:
        raise ConfigError(f"{what} does not match the public key of its certificate")


def certificate_key(cert: x509.Certificate) -> PublicKey:
    """The certificate's public key, typed as the keys Bulwark signs with (any other kind fails
    the match against the stored key)."""
    return cast(PublicKey, cert.public_key())


def key_location(key: PrivateKey, file_storage: str = "file") -> dict[str, str | None]:
    """Where `key` lives, for `/v1/ca` and the CLI: never anything secret. A key outside an
    HSM is reported as `file_storage` (its store: "file" or "kubernetes-secret")."""
    from ca_server.hsm.keys import HsmEcKey, HsmRsaKey

    if isinstance(key, (HsmEcKey, HsmRsaKey)):
        return {
            "storage": "pkcs11",
            "token": key.uri.token,
            "object": key.uri.object,
            "id": key.uri.id_hex,
            "key_type": describe_key(key.public_key()),
        }
    return {
        "storage": file_storage,
        "token": None,
        "object": None,
        "id": None,
        "key_type": describe_key(key),
    }


__all__ = [
    "FILE_CUSTODY",
    "FileCustody",
    "HsmCustody",
    "KeyCustody",
    "StoredKey",
    "certificate_key",
    "key_location",
]
