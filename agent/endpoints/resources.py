"""SDS resource names and the Envoy `Secret` each one becomes (docs/COMPATIBILITY.md §2)."""

from __future__ import annotations

from typing import Protocol

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from agent.errors import UnknownResource
from agent.files.secrets import FILE_ROOT_PREFIX, file_resource_paths
from agent.logs import printable
from agent.state.cache import Snapshot, ValidationRoots

SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
DEFAULT = "default"
ROOTCA = "ROOTCA"
SPIFFE_VALIDATOR = "envoy.tls.cert_validator.spiffe"


class ResourceNames(Protocol):
    """Which SDS names a caller may ask for, and what each one is in a snapshot."""

    def check(self, name: str) -> bool:
        """True for a file resource, False for the SVID or roots; raises for a refused name."""
        ...

    def version(self, snapshot: Snapshot, name: str) -> str | None: ...

    def secret(self, snapshot: Snapshot, name: str) -> secret_pb2.Secret | None: ...


class AgentResourceNames:
    """The per-pod agent's names: `default`, `ROOTCA` and the file resources."""

    __slots__ = ()

    def check(self, name: str) -> bool:
        return check_name(name)

    def version(self, snapshot: Snapshot, name: str) -> str | None:
        return version_of(snapshot, name)

    def secret(self, snapshot: Snapshot, name: str) -> secret_pb2.Secret | None:
        return secret_for(snapshot, name)


AGENT_NAMES = AgentResourceNames()


def check_name(name: str) -> bool:
    """Whether `name` is a file resource (True) or the SVID/roots (False); else `UnknownResource`.

    Only a check: watching the files of a file resource is `FileSecrets.acquire`'s job.
    """
    if name in (DEFAULT, ROOTCA):
        return False
    if file_resource_paths(name) is not None:
        return True
    raise UnknownResource(
        f"unknown resource name {printable(name)!r}: the agent serves {DEFAULT!r}, {ROOTCA!r}, "
        "'file-cert:<cert>~<key>' and 'file-root:<path>'"
    )


def version_of(snapshot: Snapshot, name: str) -> str | None:
    """The version of `name` in `snapshot`, or None while it does not exist."""
    if name == DEFAULT:
        return snapshot.svid.version if snapshot.svid else None
    if name == ROOTCA:
        validation = snapshot.validation
        return validation.version if validation else None
    secret = snapshot.files.get(name)
    return secret.version if secret else None


def secret_for(snapshot: Snapshot, name: str) -> secret_pb2.Secret | None:
    """The Envoy `Secret` named `name`, or None while it does not exist."""
    if name == DEFAULT:
        if snapshot.svid is None:
            return None
        return _tls_secret(name, snapshot.svid.chain_pem, snapshot.svid.key_pem)
    if name == ROOTCA:
        validation = snapshot.validation
        return _rootca_secret(name, validation) if validation else None
    secret = snapshot.files.get(name)
    if secret is None:
        return None
    if name.startswith(FILE_ROOT_PREFIX):
        return _validation_secret(name, secret.trusted_ca)
    return _tls_secret(name, secret.certificate_chain, secret.private_key)


def _tls_secret(name: str, chain: bytes, key: bytes) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=chain),
            private_key=base_pb2.DataSource(inline_bytes=key),
        ),
    )


def _rootca_secret(name: str, validation: ValidationRoots) -> secret_pb2.Secret:
    """One trust domain: the plain `trusted_ca` (every proxy understands it). Several: Envoy's
    SPIFFE certificate validator with one trust bundle per domain, so that a peer's chain is
    checked only against the roots of the trust domain its URI SAN names. In one shared
    `trusted_ca`, a federated root could vouch for a certificate naming one of our own IDs,
    and an exact SAN match would not stop it."""
    if not validation.federated:
        return _validation_secret(name, validation.own.pem)
    from envoy.config.core.v3 import extension_pb2
    from envoy.extensions.transport_sockets.tls.v3 import tls_spiffe_validator_config_pb2 as spiffe
    from google.protobuf import any_pb2

    domains = [(validation.trust_domain, validation.own), *validation.federated]
    config = spiffe.SPIFFECertValidatorConfig(
        trust_domains=[
            spiffe.SPIFFECertValidatorConfig.TrustDomain(
                name=domain, trust_bundle=base_pb2.DataSource(inline_bytes=roots.pem)
            )
            for domain, roots in domains
        ]
    )
    typed = any_pb2.Any()
    typed.Pack(config)
    return secret_pb2.Secret(
        name=name,
        validation_context=common_pb2.CertificateValidationContext(
            custom_validator_config=extension_pb2.TypedExtensionConfig(
                name=SPIFFE_VALIDATOR, typed_config=typed
            )
        ),
    )


def _validation_secret(name: str, roots: bytes) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=name,
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_bytes=roots)
        ),
    )
