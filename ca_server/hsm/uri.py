"""PKCS#11 key URIs (RFC 7512): `pkcs11:token=<label>;object=<label>;id=%01;type=private`.

Bulwark reads the path attributes `token`, `object`, `id` and `type`; values are
percent-decoded (`id` to bytes, the labels as UTF-8). Anything else is refused with a message
naming the attribute: the other standard attributes (`serial`, `slot-id`, ...) because a key
is found by token label here, and the query attributes `module-path`, `pin-source` and
`pin-value` because the module and the PIN come from `--pkcs11-module` and
`--pkcs11-pin-file` / `BULWARK_PKCS11_PIN`. An error never repeats an attribute's value, so a
PIN pasted into a URI does not reach a log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ca_server.hsm.errors import HsmConfigError

SCHEME = "pkcs11:"
ObjectType = Literal["private", "public", "cert", "secret-key", "data"]
OBJECT_TYPES: tuple[str, ...] = ("private", "public", "cert", "secret-key", "data")
SUPPORTED = ("token", "object", "id", "type")
# RFC 7512 §2.3: standard attributes Bulwark does not use (it finds the token by its label).
_OTHER_PATH = (
    "manufacturer",
    "serial",
    "model",
    "library-manufacturer",
    "library-version",
    "library-description",
    "slot-description",
    "slot-manufacturer",
    "slot-id",
)
_QUERY = ("pin-source", "pin-value", "module-name", "module-path")
TOKEN_LABEL_MAX = 32  # CK_TOKEN_INFO.label is 32 bytes, blank padded
OBJECT_LABEL_MAX = 128  # a sane bound; no HSM we know of takes longer labels

# pk11-pchar: unreserved / pk11-res-avail / pct-encoded (";" separates attributes, "?" starts
# the query, "&" separates query attributes, "/" "|" only in the query).
_PCHAR = re.compile(r"(?:[A-Za-z0-9\-._~:\[\]@!$'()*+,=]|%[0-9A-Fa-f]{2})*")
_QCHAR = re.compile(r"(?:[A-Za-z0-9\-._~:\[\]@!$'()*+,=/?|]|%[0-9A-Fa-f]{2})*")
_NAME = re.compile(r"[a-z0-9-]+")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class InvalidPkcs11Uri(HsmConfigError):
    """The text is not an RFC 7512 URI Bulwark can use; the message says which part."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Pkcs11Uri:
    """A key named by token label and object label and/or ID (at least one of the two)."""

    token: str
    object: str | None = None
    id: bytes | None = None
    type: ObjectType | None = None

    def __post_init__(self) -> None:
        if not self.token:
            raise InvalidPkcs11Uri("the PKCS#11 URI names no token: add token=<label>")
        if len(self.token.encode()) > TOKEN_LABEL_MAX:
            raise InvalidPkcs11Uri(
                f"the PKCS#11 URI's token label is longer than {TOKEN_LABEL_MAX} bytes"
            )
        if self.object is None and self.id is None:
            raise InvalidPkcs11Uri(
                f"the PKCS#11 URI pkcs11:token={_enc(self.token.encode())} names no key: "
                "add object=<label> and/or id=<%-encoded bytes>"
            )
        if self.object is not None and len(self.object.encode()) > OBJECT_LABEL_MAX:
            raise InvalidPkcs11Uri(
                f"the PKCS#11 URI's object label is longer than {OBJECT_LABEL_MAX} bytes"
            )

    def __str__(self) -> str:
        """The canonical form: attributes in a fixed order, everything but unreserved
        characters percent-encoded (so the text round-trips through `parse`)."""
        parts = [f"token={_enc(self.token.encode())}"]
        if self.object is not None:
            parts.append(f"object={_enc(self.object.encode())}")
        if self.id is not None:
            parts.append("id=" + "".join(f"%{b:02X}" for b in self.id))
        if self.type is not None:
            parts.append(f"type={self.type}")
        return SCHEME + ";".join(parts)

    def with_key(self, *, object_label: str, key_id: bytes) -> Pkcs11Uri:
        """Another private key on the same token."""
        return Pkcs11Uri(token=self.token, object=object_label, id=key_id, type="private")

    @property
    def id_hex(self) -> str | None:
        return self.id.hex() if self.id is not None else None


def parse(text: str) -> Pkcs11Uri:
    """Parse an RFC 7512 URI naming a key; raise `InvalidPkcs11Uri` naming what is wrong."""
    if not text[: len(SCHEME)].lower() == SCHEME:
        raise InvalidPkcs11Uri(
            "a PKCS#11 key URI starts with 'pkcs11:' (e.g. 'pkcs11:token=bulwark;object=root-2026')"
        )
    rest = text[len(SCHEME) :]
    path, _, query = rest.partition("?")
    if query:
        _refuse_query(query)
    values: dict[str, bytes] = {}
    for attr in path.split(";") if path else ():
        name, eq, raw = attr.partition("=")
        if not eq:
            raise InvalidPkcs11Uri(
                "a PKCS#11 URI attribute has no '=': attributes are NAME=VALUE separated by ';'"
            )
        _check_name(name, path_attr=True)
        if name in values:
            raise InvalidPkcs11Uri(f"PKCS#11 URI attribute {name!r} appears twice")
        if not _PCHAR.fullmatch(raw):
            raise InvalidPkcs11Uri(
                f"PKCS#11 URI attribute {name!r} holds a character that must be "
                "percent-encoded, or a '%' not followed by two hex digits"
            )
        values[name] = _pct_decode(raw)
    return _build(values)


def _build(values: dict[str, bytes]) -> Pkcs11Uri:
    def text(name: str) -> str | None:
        raw = values.get(name)
        if raw is None:
            return None
        if not raw:
            raise InvalidPkcs11Uri(f"PKCS#11 URI attribute {name!r} is empty")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidPkcs11Uri(f"PKCS#11 URI attribute {name!r} is not UTF-8") from None

    kind = text("type")
    if kind is not None and kind not in OBJECT_TYPES:
        raise InvalidPkcs11Uri(
            f"PKCS#11 URI type must be one of {', '.join(OBJECT_TYPES)}, got {kind!r}"
        )
    key_id = values.get("id")
    if key_id is not None and not key_id:
        raise InvalidPkcs11Uri("PKCS#11 URI attribute 'id' is empty")
    return Pkcs11Uri(
        token=text("token") or "",
        object=text("object"),
        id=key_id,
        type=kind,  # type: ignore[arg-type]  # checked against OBJECT_TYPES above
    )


def _check_name(name: str, *, path_attr: bool) -> None:
    if not _NAME.fullmatch(name):
        raise InvalidPkcs11Uri(
            "a PKCS#11 URI attribute name is malformed (names are lower-case letters, digits "
            "and '-')"
        )
    if name in SUPPORTED:
        if path_attr:
            return
        raise InvalidPkcs11Uri(
            f"PKCS#11 URI attribute {name!r} belongs in the path, before any '?'"
        )
    if name in _OTHER_PATH:
        raise InvalidPkcs11Uri(
            f"PKCS#11 URI attribute {name!r} is not supported: Bulwark finds a key by "
            f"{', '.join(SUPPORTED)}"
        )
    if name in _QUERY:
        raise InvalidPkcs11Uri(
            f"PKCS#11 URI query attribute {name!r} is not accepted: the module comes from "
            "--pkcs11-module and the PIN from --pkcs11-pin-file or BULWARK_PKCS11_PIN"
        )
    raise InvalidPkcs11Uri(
        f"unknown PKCS#11 URI attribute {name!r} (Bulwark reads {', '.join(SUPPORTED)})"
    )


def _refuse_query(query: str) -> None:
    """Every query attribute is refused; the first one names the reason."""
    name, _, value = query.split("&")[0].partition("=")
    if not _QCHAR.fullmatch(value):
        raise InvalidPkcs11Uri("the PKCS#11 URI's query is malformed")
    _check_name(name, path_attr=False)


def token_uri(label: str) -> str:
    """`pkcs11:token=<label>`: a token named without a key, for messages."""
    return f"{SCHEME}token={_enc(label.encode())}"


def _pct_decode(raw: str) -> bytes:
    out = bytearray()
    i = 0
    data = raw.encode("ascii")
    while i < len(data):
        if data[i] == ord("%"):
            out.append(int(data[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(data[i])
            i += 1
    return bytes(out)


def _enc(raw: bytes) -> str:
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in raw)


__all__ = ["OBJECT_TYPES", "InvalidPkcs11Uri", "Pkcs11Uri", "parse", "token_uri"]
