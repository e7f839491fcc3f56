"""Reading the SDS `ROOTCA` secret the agent serves, in either of its two forms."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from envoy.extensions.transport_sockets.tls.v3 import tls_spiffe_validator_config_pb2 as spiffe

from certs.pem import load_certificates

SPIFFE_VALIDATOR = "envoy.tls.cert_validator.spiffe"


def rootca_domains(secret: Any) -> dict[str, set[bytes]]:
    """Trust domain -> DER roots of a `ROOTCA` secret: one entry per trust domain of Envoy's
    SPIFFE validator (several domains), or `{"": roots}` for the plain `trusted_ca` form."""
    context = secret.validation_context
    if not context.HasField("custom_validator_config"):
        return {"": _der(context.trusted_ca.inline_bytes)}
    custom = context.custom_validator_config
    assert custom.name == SPIFFE_VALIDATOR, custom.name
    assert not context.HasField("trusted_ca")  # every root is bound to one domain
    config = spiffe.SPIFFECertValidatorConfig()
    assert custom.typed_config.Unpack(config)
    return {d.name: _der(d.trust_bundle.inline_bytes) for d in config.trust_domains}


def _der(pem: bytes) -> set[bytes]:
    return {c.public_bytes(Encoding.DER) for c in load_certificates(pem)}
