"""CA key material: where it comes from (self-signed in the data dir, or a plugged-in
`cacerts` directory) and the checks that keep a half-configured CA from starting."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ca_server.authority.custody import (
    FILE_CUSTODY,
    PEM_SUFFIX,
    URI_SUFFIX,
    KeyCustody,
    certificate_key,
)
from ca_server.errors import ConfigError
from certs import istio_files
from certs.errors import CertsError
from certs.files import write_atomic
from certs.keys import (
    KeyType,
    PrivateKey,
    generate_key,
    load_private_key,
    private_key_pem,
    spki_der,
)
from certs.pem import bundle_pem, load_certificates, to_pem
from certs.profile import leaf_certificate, self_signed_root
from certs.spiffe_id import SpiffeId, TrustDomain


@dataclass(frozen=True, slots=True, kw_only=True)
class CaMaterial:
    """The signing certificate and key, the intermediates sent after each leaf, and the roots."""

    signing_cert: x509.Certificate
    signing_key: PrivateKey
    chain: tuple[x509.Certificate, ...]  # certificates between the leaf's issuer and the roots
    roots: tuple[x509.Certificate, ...]
    source: str  # "self-signed" or "cacerts:<dir>"

    @property
    def root_bundle_pem(self) -> str:
        return bundle_pem(self.roots)

    def response_tail(self) -> list[str]:
        """What follows the leaf in every response: each chain cert, then the roots as one element."""
        return [to_pem(c) for c in self.chain] + [self.root_bundle_pem]

    def issue_server_certificate(
        self,
        *,
        now: datetime,
        ttl: timedelta,
        dns_names: tuple[str, ...] = (),
        spiffe_id: SpiffeId | None = None,
    ) -> ServerCertificate:
        """A fresh P-256 key and a TLS certificate for one of the CA's own servers (its gRPC
        port, istiod, the bundle endpoint), signed by this material, with the chain after it."""
        key = generate_key(KeyType.EC_P256)
        leaf = leaf_certificate(
            spiffe_id=spiffe_id,
            public_key=key.public_key(),
            issuer_cert=self.signing_cert,
            issuer_key=self.signing_key,
            now=now,
            ttl=ttl,
            dns_names=dns_names,
        )
        chain = to_pem(leaf) + "".join(to_pem(c) for c in self.chain)
        return ServerCertificate(leaf=leaf, chain_pem=chain.encode(), key_pem=private_key_pem(key))


KEY_STEM = istio_files.CA_KEY.removesuffix(".pem")  # ca-key.pem, or ca-key.uri with an HSM key


@dataclass(frozen=True, slots=True)
class ServerCertificate:
    """What `CaMaterial.issue_server_certificate` returns; `key_pem` is a secret."""

    leaf: x509.Certificate
    chain_pem: bytes
    key_pem: bytes


class KeyStore(Protocol):
    """Where self-signed CA material persists (a directory, a Kubernetes Secret, ...)."""

    def load(self) -> CaMaterial | None: ...

    def save(self, material: CaMaterial) -> CaMaterial:
        """Store `material` unless some material already exists; return what is stored."""


class DirectoryKeyStore:
    """Self-signed material in `<data-dir>/ca/`: `ca-cert.pem`, `root-bundle.pem` and the key
    as its custody stores it (`ca-key.pem` 0600, or `ca-key.uri` naming an HSM key)."""

    def __init__(self, directory: Path, custody: KeyCustody = FILE_CUSTODY) -> None:
        self.directory = directory
        self.custody = custody

    def load(self) -> CaMaterial | None:
        cert_path = self.directory / istio_files.CA_CERT
        key_names = [f"{KEY_STEM}{PEM_SUFFIX}", f"{KEY_STEM}{URI_SUFFIX}"]
        keys = {n: self.directory / n for n in key_names if (self.directory / n).exists()}
        if not cert_path.exists() and not keys:
            return None
        if not cert_path.exists():
            raise ConfigError(
                f"CA material in {self.directory} is incomplete: {istio_files.CA_CERT} is missing"
            )
        if not keys and self.custody.kind == "file":
            raise ConfigError(
                f"CA material in {self.directory} is incomplete: {istio_files.CA_KEY} is missing"
            )
        cert = _load_one(cert_path)
        key = self.custody.decode(
            {n: _read(p) for n, p in keys.items()},
            KEY_STEM,
            certificate_key(cert),
            str(self.directory),
        )
        bundle_path = self.directory / "root-bundle.pem"
        roots = tuple(_load_all(bundle_path)) if bundle_path.exists() else (cert,)
        if cert not in roots:
            roots = (cert, *roots)
        return CaMaterial(
            signing_cert=cert, signing_key=key, chain=(), roots=roots, source="self-signed"
        )

    def save(self, material: CaMaterial) -> CaMaterial:
        existing = self.load()
        if existing is not None:
            return existing
        self.replace(material)
        return material

    def replace(self, material: CaMaterial) -> None:
        """Store renewed material: the bundle first, so a crash never leaves a root unpublished."""
        _private_directory(self.directory)
        write_atomic(self.directory / "root-bundle.pem", bundle_pem(material.roots).encode())
        stored = self.custody.encode(material.signing_key)
        write_atomic(self.directory / (KEY_STEM + stored.suffix), stored.data, mode=stored.mode)
        write_atomic(self.directory / istio_files.CA_CERT, to_pem(material.signing_cert).encode())


def create_self_signed(
    trust_domain: TrustDomain, now: datetime, key: PrivateKey | None = None
) -> CaMaterial:
    """A new self-signed root for `key` (a new P-256 key by default)."""
    key = key if key is not None else generate_key(KeyType.EC_P256)
    root = self_signed_root(key=key, trust_domain=trust_domain, now=now)
    return CaMaterial(
        signing_cert=root, signing_key=key, chain=(), roots=(root,), source="self-signed"
    )


def load_or_create(
    store: KeyStore, trust_domain: TrustDomain, now: datetime, custody: KeyCustody = FILE_CUSTODY
) -> CaMaterial:
    """Reuse stored self-signed material, or create and store it on first start (with the
    custody's initial key: a new file key, or the HSM key `--ca-key` names)."""
    existing = store.load()
    if existing is not None:
        return existing
    return store.save(create_self_signed(trust_domain, now, custody.initial_key()))


def load_cacerts_dir(
    directory: Path, now: datetime, custody: KeyCustody = FILE_CUSTODY
) -> CaMaterial:
    """Plugged-in CA files (`ca-cert.pem`... or `tls.crt`...); any gap or mismatch is a ConfigError.

    With an HSM custody the directory holds no key: `ca-key.uri` names the HSM key when the
    directory's certificate is not for `--ca-key` itself (`bulwark ca intermediate install`
    writes it)."""
    if not directory.is_dir():
        raise ConfigError(f"--cacerts-dir {directory} is not a directory")
    for cert_name, key_name, root_name, chain_name in istio_files.CACERTS_LAYOUTS:
        names = [n for n in (cert_name, key_name, root_name, chain_name) if n]
        present = [n for n in names if (directory / n).exists()]
        if not present:
            continue
        required = [cert_name, root_name] + ([chain_name] if chain_name else [])
        if custody.kind == "file":
            required.insert(1, key_name)
        missing = [n for n in required if not (directory / n).exists()]
        if missing:
            raise ConfigError(
                f"plugged-in CA directory {directory} is incomplete: missing {', '.join(missing)} "
                f"(found {', '.join(present)})"
            )
        return _load_plugged(directory, (cert_name, key_name, root_name, chain_name), now, custody)
    layouts = " nor ".join("/".join(n for n in names if n) for names in istio_files.CACERTS_LAYOUTS)
    raise ConfigError(f"plugged-in CA directory {directory} holds neither {layouts}")


def _load_plugged(
    directory: Path,
    names: tuple[str, str, str, str | None],
    now: datetime,
    custody: KeyCustody,
) -> CaMaterial:
    cert_name, key_name, root_name, chain_name = names
    cert_path, key_path, root_path = (
        directory / cert_name,
        directory / key_name,
        directory / root_name,
    )
    cert = _load_one(cert_path)
    if custody.kind == "file":
        key = _load_key(key_path)
        _check_key_matches(cert, key, cert_path, key_path)
    else:
        key = _plugged_hsm_key(directory, key_path, cert, custody)
    roots = tuple(_load_all(root_path))
    chain: list[x509.Certificate] = []
    if chain_name is not None:
        chain_path = directory / chain_name
        raw = _read(chain_path)
        if raw.strip():
            chain = _load_all(chain_path)
    # The chain sent after each leaf starts with the signing certificate and stops before the roots.
    chain = [c for c in chain if c not in roots]
    if cert not in roots and (not chain or chain[0] != cert):
        chain.insert(0, cert)
    _check_signing_cert(cert, cert_path)
    try:
        if cert not in roots:
            verify_chain_of_ca(cert, chain[1:], list(roots), now)
    except ConfigError as exc:
        raise ConfigError(f"{cert_path} does not chain to {root_path}: {exc}") from exc
    return CaMaterial(
        signing_cert=cert,
        signing_key=key,
        chain=tuple(chain),
        roots=roots,
        source=f"cacerts:{directory}",
    )


def _plugged_hsm_key(
    directory: Path, key_path: Path, cert: x509.Certificate, custody: KeyCustody
) -> PrivateKey:
    if key_path.exists():
        raise ConfigError(
            f"{key_path} is a private key file, but --ca-key names a key in the HSM: a key "
            "that was ever on disk is not an HSM key; remove the file"
        )
    uri_path = directory / f"{KEY_STEM}{URI_SUFFIX}"
    blobs = {uri_path.name: _read(uri_path)} if uri_path.exists() else {}
    return custody.decode(blobs, KEY_STEM, certificate_key(cert), str(directory))


def verify_chain_of_ca(
    cert: x509.Certificate,
    intermediates: list[x509.Certificate],
    roots: list[x509.Certificate],
    now: datetime,
) -> None:
    """Check that a CA certificate chains to the roots, by issuing nothing: verify its signatures."""
    path = [cert, *intermediates]
    for child, parent in zip(path, [*path[1:], None], strict=True):
        issuers = (
            [parent] if parent is not None else [r for r in roots if r.subject == child.issuer]
        )
        if not any(_signed_by(child, issuer) for issuer in issuers):
            raise ConfigError(
                f"certificate {child.subject.rfc4514_string() or '(empty)'} is not signed by the next one"
            )
        if child.not_valid_after_utc < now:
            raise ConfigError(
                f"certificate {child.subject.rfc4514_string()} expired at {child.not_valid_after_utc}"
            )


def _signed_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _check_signing_cert(cert: x509.Certificate, path: Path) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound as exc:
        raise ConfigError(f"{path} is not a CA certificate: no BasicConstraints") from exc
    if not bc.ca:
        raise ConfigError(f"{path} is not a CA certificate: BasicConstraints CA:false")


def _check_key_matches(
    cert: x509.Certificate, key: PrivateKey, cert_path: Path, key_path: Path
) -> None:
    if spki_der(key.public_key()) != spki_der(cert.public_key()):  # type: ignore[arg-type]
        raise ConfigError(f"{key_path} does not match the public key of {cert_path}")


def _load_one(path: Path) -> x509.Certificate:
    return _load_all(path)[0]


def _read(path: Path) -> bytes:
    """A CA file's bytes, or a ConfigError naming the file and what to do about it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror or type(exc).__name__}; it must be a PEM file "
            "this user can read"
        ) from None


def _private_directory(directory: Path) -> None:
    """Create a key directory owner-only whatever the umask (mkdir's mode alone is masked)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)


def _load_all(path: Path) -> list[x509.Certificate]:
    raw = _read(path)
    try:
        return load_certificates(raw, what=str(path))
    except CertsError as exc:
        raise ConfigError(str(exc)) from exc


def _load_key(path: Path) -> PrivateKey:
    raw = _read(path)
    try:
        return load_private_key(raw)
    except (ValueError, TypeError, CertsError) as exc:
        raise ConfigError(f"{path} does not hold a readable unencrypted private key") from exc


def write_root_bundle(path: Path, material: CaMaterial) -> None:
    """Publish the current root bundle where agents and clients read it."""
    data = material.root_bundle_pem.encode()
    if not path.exists() or path.read_bytes() != data:
        write_atomic(path, data)


__all__ = [
    "CaMaterial",
    "DirectoryKeyStore",
    "KeyStore",
    "create_self_signed",
    "load_cacerts_dir",
    "load_or_create",
    "write_root_bundle",
]
