"""Reading a SPIFFE bundle document (SPIFFE Trust Domain and Bundle spec): a JWKS whose
`use: x509-svid` keys carry one certificate in `x5c` and whose `use: jwt-svid` keys carry
a `kid`. The CA (federated bundles it fetches) and the agent (bundles the CA hands it)
read bundles through these two functions and keep only their own policies on top.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cryptography import x509

from certs.errors import InvalidBundle

MAX_BUNDLE_BYTES = 1 << 20  # one trust domain's document


def bundle_document(data: bytes, *, max_bytes: int = MAX_BUNDLE_BYTES) -> dict[str, Any]:
    """The JSON object of a bundle with a `keys` list; `InvalidBundle` saying what is wrong."""
    if len(data) > max_bytes:
        raise InvalidBundle(f"bundle of {len(data)} bytes is larger than {max_bytes} bytes")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidBundle(f"bundle is not JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise InvalidBundle("bundle has no `keys` list")
    if not all(isinstance(key, dict) for key in doc["keys"]):
        raise InvalidBundle("a bundle key is not a JSON object")
    return doc


def x509_authorities(doc: dict[str, Any]) -> list[x509.Certificate]:
    """The certificates of the `x509-svid` keys of a document from `bundle_document`."""
    roots = []
    for key in doc["keys"]:
        if key.get("use") != "x509-svid":
            continue
        x5c = key.get("x5c")
        if not isinstance(x5c, list) or len(x5c) != 1 or not isinstance(x5c[0], str):
            raise InvalidBundle("an x509-svid key must have exactly one certificate in `x5c`")
        try:
            roots.append(x509.load_der_x509_certificate(base64.b64decode(x5c[0], validate=True)))
        except (ValueError, binascii.Error) as exc:
            raise InvalidBundle(f"an x509-svid key's certificate does not parse: {exc}") from None
    return roots
