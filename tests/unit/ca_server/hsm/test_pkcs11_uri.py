"""RFC 7512 key URIs: what parses to what, and every malformed or unusable URI refused with a
message naming the part (never the value of a PIN pasted into one)."""

from __future__ import annotations

import pytest

from ca_server.errors import ConfigError
from ca_server.hsm.uri import InvalidPkcs11Uri, Pkcs11Uri, parse

GOOD = [
    ("pkcs11:token=bulwark;object=root-2026", Pkcs11Uri(token="bulwark", object="root-2026")),
    (
        "pkcs11:token=bulwark;object=root;type=private",
        Pkcs11Uri(token="bulwark", object="root", type="private"),
    ),
    ("pkcs11:token=bulwark;id=%01%FF", Pkcs11Uri(token="bulwark", id=b"\x01\xff")),
    ("pkcs11:token=my%20token;object=a%3Bb", Pkcs11Uri(token="my token", object="a;b")),
    ("PKCS11:token=t;object=o", Pkcs11Uri(token="t", object="o")),
    ("pkcs11:object=o;token=t", Pkcs11Uri(token="t", object="o")),  # any order
    ("pkcs11:token=t;object=%C3%A9t%C3%A9", Pkcs11Uri(token="t", object="été")),
]


@pytest.mark.parametrize(("text", "want"), GOOD, ids=[g[0] for g in GOOD])
def test_parses(text: str, want: Pkcs11Uri) -> None:
    got = parse(text)
    assert got == want
    assert parse(str(got)) == got  # the canonical form round-trips


BAD = [
    ("not a pkcs11 URI", "file:/etc/key.pem", "starts with 'pkcs11:'"),
    ("no token", "pkcs11:object=root", "names no token"),
    ("no key", "pkcs11:token=bulwark", "names no key"),
    ("empty value", "pkcs11:token=bulwark;object=", "'object' is empty"),
    ("empty id", "pkcs11:token=bulwark;id=", "'id' is empty"),
    ("bad percent", "pkcs11:token=bulwark;object=%G1", "percent-encoded"),
    ("short percent", "pkcs11:token=bulwark;object=a%4", "percent-encoded"),
    ("space", "pkcs11:token=bulwark;object=a b", "percent-encoded"),
    ("duplicate", "pkcs11:token=a;token=b;object=o", "'token' appears twice"),
    ("no equals", "pkcs11:token=a;object", "has no '='"),
    ("unknown attribute", "pkcs11:token=a;object=o;colour=red", "unknown PKCS#11 URI attribute 'colour'"),
    ("unsupported standard attribute", "pkcs11:token=a;object=o;serial=1234", "'serial' is not supported"),
    ("slot-id", "pkcs11:slot-id=0;object=o", "'slot-id' is not supported"),
    ("bad type", "pkcs11:token=a;object=o;type=key", "type must be one of"),
    ("module-path query", "pkcs11:token=a;object=o?module-path=/x.so", "--pkcs11-module"),
    ("pin-source query", "pkcs11:token=a;object=o?pin-source=file:/p", "--pkcs11-pin-file"),
    ("path attribute in query", "pkcs11:token=a?object=o", "belongs in the path"),
    ("upper-case name", "pkcs11:TOKEN=a;object=o", "name is malformed"),
    ("token label too long", "pkcs11:token=" + "t" * 33 + ";object=o", "longer than 32 bytes"),
    ("label not UTF-8", "pkcs11:token=a;object=%FF", "not UTF-8"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "text", "says"), BAD, ids=[b[0] for b in BAD])
def test_refused_with_a_message(name: str, text: str, says: str) -> None:
    with pytest.raises(InvalidPkcs11Uri) as caught:
        parse(text)
    assert says in str(caught.value)
    assert isinstance(caught.value, ConfigError)  # a start-up error: exit 2, one line


def test_a_pin_in_the_uri_never_reaches_the_message() -> None:
    for text in (
        "pkcs11:token=a;object=o?pin-value=s3cr3t-1234",
        "pkcs11:token=a;object=o;pin-value=s3cr3t-1234",
        "pkcs11:token=a;s3cr3t-1234",
    ):
        with pytest.raises(InvalidPkcs11Uri) as caught:
            parse(text)
        assert "s3cr3t" not in str(caught.value), text


def test_canonical_form_encodes_everything_but_unreserved() -> None:
    uri = Pkcs11Uri(token="a b", object="x/y", id=b"\x00\x10", type="private")
    assert str(uri) == "pkcs11:token=a%20b;object=x%2Fy;id=%00%10;type=private"
