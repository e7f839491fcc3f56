"""Every file a `ca serve` flag names, read before the CA starts anything.

A file that is missing, unreadable or not what the flag needs cannot come right by waiting:
the CA refuses to start with one line naming the flag and the file (a `ConfigError`, exit 2
through `certs.cli.exits`), instead of starting, saying it is ready and refusing every
client later. The other flags that name files are checked where they are first used, before
anything is logged: `--cacerts-dir` and `--kubeconfig` with the CA material, `--data-dir`
when it is claimed, `--record` when it is opened. What may come later, an OIDC issuer over
the network, is not checked here: `IssuerKeysCheck` keeps `/readyz` false until it answers.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ca_server.authn.jwks import keyset
from ca_server.config import CaConfig
from ca_server.errors import ConfigError, UpstreamUnavailable
from ca_server.record.ledger import RecordUrlError, parse_record_url
from ca_server.spiffe.federation.store import foreign_bundle
from certs.errors import CertsError, InvalidBundle
from certs.keys import load_private_key, spki_der
from certs.pem import load_certificates

DER, SPKI = Encoding.DER, PublicFormat.SubjectPublicKeyInfo


def check_files(config: CaConfig) -> None:
    """Read every file the flags name; the first problem as a `ConfigError`."""
    if config.jwks_file is not None:
        _jwks_file(config.jwks_file)
    if config.admin_token_file is not None:
        _admin_token(config.admin_token_file)
    if config.ready_file is not None:
        _writable_dir("--ready-file", config.ready_file)
    if config.bundle_endpoint_cert is not None or config.bundle_endpoint_key is not None:
        _bundle_endpoint_files(config.bundle_endpoint_cert, config.bundle_endpoint_key)
    for peer in config.federate_with:
        if peer.bundle_file is not None:
            flag = f"--federate-with {peer.trust_domain}: bundle={peer.bundle_file}"
            try:
                foreign_bundle(_read(flag, peer.bundle_file))
            except InvalidBundle as exc:
                raise ConfigError(f"{flag}: {exc}") from None
    _sqlite_record(config)


def _read(flag: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{flag}: cannot read it ({exc.strerror or type(exc).__name__})"
        ) from None


def _jwks_file(path: Path) -> None:
    flag = f"--jwks-file {path}"
    try:
        document = json.loads(_read(flag, path))
    except ValueError:
        raise ConfigError(f'{flag}: not JSON (a JWKS: {{"keys": [...]}})') from None
    if not isinstance(document, dict):
        raise ConfigError(f'{flag}: not a JSON object (a JWKS: {{"keys": [...]}})')
    try:
        keyset(document, str(path))
    except UpstreamUnavailable:
        raise ConfigError(f"{flag}: holds no usable signing key") from None


def _admin_token(path: Path) -> None:
    flag = f"--admin-token-file {path}"
    if not _read(flag, path).strip():
        raise ConfigError(f"{flag}: the file is empty")


def _writable_dir(flag: str, path: Path) -> None:
    """The directory `path` will be written in: created when missing, as the write does."""
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{flag} {path}: cannot create {directory} ({exc.strerror or type(exc).__name__})"
        ) from None
    if not directory.is_dir():
        raise ConfigError(f"{flag} {path}: {directory} is not a directory")


def _bundle_endpoint_files(cert: Path | None, key: Path | None) -> None:
    if cert is None or key is None:
        raise ConfigError("--bundle-endpoint-cert and --bundle-endpoint-key go together")
    cert_flag, key_flag = f"--bundle-endpoint-cert {cert}", f"--bundle-endpoint-key {key}"
    try:
        chain = load_certificates(_read(cert_flag, cert), what=str(cert))
    except CertsError as exc:
        raise ConfigError(f"{cert_flag}: {exc}") from None
    try:
        private = load_private_key(_read(key_flag, key))
    except (CertsError, ValueError, TypeError):
        raise ConfigError(f"{key_flag}: not a PEM private key") from None
    if spki_der(private.public_key()) != chain[0].public_key().public_bytes(DER, SPKI):
        raise ConfigError(f"{key_flag}: not the key of the first certificate of {cert}")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{cert_flag} / {key_flag}: TLS cannot use them ({exc})") from None


def _sqlite_record(config: CaConfig) -> None:
    """An SQLite `--record` needs its directory (the default one is the data dir)."""
    if config.record is None:
        return
    try:
        url = parse_record_url(config.record)
    except RecordUrlError as exc:
        raise ConfigError(f"--record: {exc}") from None
    if url.dialect != "sqlite" or url.target == ":memory:":
        return
    directory = Path(url.target).parent
    if not directory.is_dir():  # an SQLite URL holds no password: shown as given
        shown = "/" + str(directory).lstrip("/") if directory.is_absolute() else str(directory)
        raise ConfigError(f"--record {config.record}: the directory {shown} does not exist")
