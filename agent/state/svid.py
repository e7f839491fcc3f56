"""The secrets the agent holds: its X.509-SVID (key plus chain) and the root bundle."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from agent.errors import CaResponseInvalid
from certs.errors import CertsError
from certs.keys import PrivateKey, private_key_der, private_key_pem, spki_sha256
from certs.pem import bundle_pem, load_certificates, serial_hex, sha256_fingerprint
from certs.spiffe_id import SpiffeId
from certs.verify import spiffe_id_of, verify_chain


@dataclass(frozen=True, slots=True)
class RootBundle:
    """Trusted roots, deduplicated, in a stable order; `version` is a content hash."""

    certs: tuple[x509.Certificate, ...]

    @classmethod
    def of(cls, *groups: Sequence[x509.Certificate]) -> RootBundle:
        seen: dict[str, x509.Certificate] = {}
        for group in groups:
            for cert in group:
                seen.setdefault(sha256_fingerprint(cert), cert)
        return cls(tuple(seen.values()))

    @property
    def pem(self) -> bytes:
        return bundle_pem(self.certs).encode()

    @property
    def der(self) -> bytes:
        return b"".join(c.public_bytes(Encoding.DER) for c in self.certs)

    @property
    def version(self) -> str:
        return hashlib.sha256(self.der).hexdigest()[:16]

    def fingerprints(self) -> list[str]:
        return [sha256_fingerprint(c) for c in self.certs]


@dataclass(frozen=True, slots=True, kw_only=True)
class Svid:
    """A workload certificate with its key. `chain` is what the CA returned, root included."""

    spiffe_id: SpiffeId | None
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]
    roots: RootBundle  # the roots the CA sent with this certificate
    issued_at: datetime  # the agent's clock when it received the certificate

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def serial(self) -> str:
        return serial_hex(self.leaf)

    @property
    def not_before(self) -> datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.leaf.not_valid_after_utc

    @property
    def lifetime(self) -> timedelta:
        """From receipt to expiry, as Istio measures it (NotBefore is backdated by the CA)."""
        return self.not_after - self.issued_at

    @property
    def version(self) -> str:
        return self.serial

    @property
    def chain_pem(self) -> bytes:
        """Leaf first, root last: what Istio serves as `certificate_chain` and writes to files."""
        return bundle_pem(self.chain).encode()

    @property
    def key_pem(self) -> bytes:
        return private_key_pem(self.key)

    @property
    def key_der(self) -> bytes:
        return private_key_der(self.key)

    def svid_chain_der(self) -> bytes:
        """Leaf and intermediates (roots left out) in DER, as the Workload API sends them."""
        roots = set(self.roots.fingerprints())
        kept = [self.leaf, *(c for c in self.chain[1:] if sha256_fingerprint(c) not in roots)]
        return b"".join(c.public_bytes(Encoding.DER) for c in kept)


def svid_from_response(
    *, chain_pems: Sequence[str], key: PrivateKey, expected: SpiffeId, now: datetime
) -> Svid:
    """Check the CA's answer (leaf first, root bundle last) and make it an `Svid`."""
    if len(chain_pems) < 2:
        raise CaResponseInvalid(
            f"CA returned {len(chain_pems)} certificate(s); a chain needs a leaf and a root"
        )
    try:
        chain = [c for pem in chain_pems for c in load_certificates(pem, what="CA response")]
        roots = load_certificates(chain_pems[-1], what="CA root bundle")
        leaf = chain[0]
        if spki_sha256(leaf.public_key()) != spki_sha256(key.public_key()):  # type: ignore[arg-type]
            raise CaResponseInvalid("CA returned a certificate for a different public key")
        got = spiffe_id_of(leaf)
        verify_chain(chain, roots, now=now)
    except CertsError as exc:
        raise CaResponseInvalid(f"CA returned an unusable certificate chain: {exc}") from exc
    if got != expected:
        raise CaResponseInvalid(f"CA issued {got} but the agent asked for {expected}")
    return Svid(
        spiffe_id=got, key=key, chain=tuple(chain), roots=RootBundle.of(roots), issued_at=now
    )
