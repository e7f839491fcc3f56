"""This CA's SPIFFE trust bundle: what goes in it (the format is `certs.spiffe_bundle`'s).

Each X.509 root as an `x509-svid` authority, each published JWT-SVID key with
`use: jwt-svid` and its `kid`, plus `spiffe_sequence`
(bumped by the supervisor whenever the contents change, kept in the JWT key file so all
processes and restarts agree) and `spiffe_refresh_hint` (seconds). The workers'
`FetchTrustBundles`, the admin API's `/v1/trust-bundle?format=spiffe` and the bundle
endpoint all serve `BundleSource.document()`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509

from ca_server.spiffe.jwtsvid.keyset import JwtKey, KeyFile, KeySet, bundle_digest, published
from certs.pem import sha256_fingerprint
from certs.spiffe_bundle import SpiffeBundle, build_bundle

Clock = Callable[[], datetime]


def own_bundle(
    *,
    roots: Sequence[x509.Certificate],
    jwt_keys: Sequence[JwtKey],
    sequence: int,
    refresh_hint: timedelta,
) -> SpiffeBundle:
    """This CA's bundle (written by `certs.spiffe_bundle`, the one writer of the format)."""
    return build_bundle(
        roots=roots,
        jwt_keys=[k.public_jwk() for k in jwt_keys],
        sequence=sequence,
        refresh_hint=max(1, int(refresh_hint.total_seconds())),
    )


def contents_digest(roots: Sequence[x509.Certificate], keyset: KeySet, now: datetime) -> str:
    """What `spiffe_sequence` tracks: the roots and the JWT keys published at `now`."""
    return bundle_digest((sha256_fingerprint(r) for r in roots), published(keyset.keys, now))


class BundleSource:
    """This CA's bundle from its current roots and the shared JWT key file."""

    def __init__(
        self,
        *,
        roots: Callable[[], Sequence[x509.Certificate]],
        key_file: KeyFile,
        refresh_hint: timedelta,
        clock: Clock = lambda: datetime.now(UTC),
    ) -> None:
        self._roots = roots
        self._key_file = key_file
        self._refresh_hint = refresh_hint
        self._clock = clock

    def bundle(self) -> SpiffeBundle:
        keyset = self._key_file.load()
        return own_bundle(
            roots=self._roots(),
            jwt_keys=published(keyset.keys, self._clock()),
            sequence=keyset.sequence,
            refresh_hint=self._refresh_hint,
        )

    def document(self) -> dict[str, Any]:
        return self.bundle().document()

    def json_bytes(self) -> bytes:
        return self.bundle().to_json()
