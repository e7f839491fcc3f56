"""The shared PKI core and the `bulwark` command line.

SPIFFE IDs and trust domains (`spiffe_id`), keys (`keys`), CSRs (`csr`), the
certificate profiles of the CA and its leaves (`profile`), PEM helpers (`pem`)
and chain plus X.509-SVID checks (`verify`). The CA server and the agent both
build on these; nothing here does I/O beyond parsing bytes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from certs.csr import MAX_CSR_BYTES, ParsedCsr, build_csr, parse_csr
    from certs.errors import (
        CertsError,
        ChainError,
        CsrError,
        InvalidSpiffeId,
        SvidError,
        UnsupportedKey,
    )
    from certs.keys import KeyType, PrivateKey, PublicKey, generate_key, spki_sha256
    from certs.pem import bundle_pem, load_certificates, serial_hex, sha256_fingerprint, to_pem
    from certs.profile import leaf_certificate, random_serial, self_signed_root
    from certs.spiffe_id import SpiffeId, TrustDomain
    from certs.verify import spiffe_id_of, svid_violations, verify_chain, verify_svid

# Each public name and the module that defines it. They load on first use, so a process that
# needs one module (the agent: keys, CSRs, chain checks) does not import the others (the CA's
# certificate profiles): importing a submodule runs this file first.
_HOME = {
    "csr": ("MAX_CSR_BYTES", "ParsedCsr", "build_csr", "parse_csr"),
    "errors": (
        "CertsError",
        "ChainError",
        "CsrError",
        "InvalidSpiffeId",
        "SvidError",
        "UnsupportedKey",
    ),
    "keys": ("KeyType", "PrivateKey", "PublicKey", "generate_key", "spki_sha256"),
    "pem": ("bundle_pem", "load_certificates", "serial_hex", "sha256_fingerprint", "to_pem"),
    "profile": ("leaf_certificate", "random_serial", "self_signed_root"),
    "spiffe_id": ("SpiffeId", "TrustDomain"),
    "verify": ("spiffe_id_of", "svid_violations", "verify_chain", "verify_svid"),
}
_MODULE_OF = {name: module for module, names in _HOME.items() for name in names}

__all__ = [
    "MAX_CSR_BYTES",
    "CertsError",
    "ChainError",
    "CsrError",
    "InvalidSpiffeId",
    "KeyType",
    "ParsedCsr",
    "PrivateKey",
    "PublicKey",
    "SpiffeId",
    "SvidError",
    "TrustDomain",
    "UnsupportedKey",
    "build_csr",
    "bundle_pem",
    "generate_key",
    "leaf_certificate",
    "load_certificates",
    "parse_csr",
    "random_serial",
    "self_signed_root",
    "serial_hex",
    "sha256_fingerprint",
    "spiffe_id_of",
    "spki_sha256",
    "svid_violations",
    "to_pem",
    "verify_chain",
    "verify_svid",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'certs' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"certs.{module}"), name)
    globals()[name] = value  # once loaded, a plain module attribute
    return value
