"""Keeping the CA material current: plugged-in files reloaded when they change, and the
self-signed root renewed before it expires.

Self-signed renewal follows Istio (`selfsignedcarootcertrotator.go`): when less than 20% of
the root's life remains, a new root is made with the *same key and subject*, so every leaf
already issued chains to the old and the new root alike. Bulwark adds the prepared/active
step of SPIRE: the new root is published in the trust bundle (next to the old one, until
that expires) before the CA signs anything with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ca_server.authority.material import CaMaterial, KeyStore
from certs.pem import bundle_pem, sha256_fingerprint
from certs.profile import ROOT_LIFETIME, self_signed_root
from certs.spiffe_id import TrustDomain

if TYPE_CHECKING:
    from ca_server.authority.slots.rotator import SlotRotator

log = logging.getLogger(__name__)
RENEWAL_THRESHOLD = 0.2


@runtime_checkable
class RenewableKeyStore(KeyStore, Protocol):
    """A key store that can take the root renewed under the same key."""

    def replace(self, material: CaMaterial) -> None:
        """Overwrite the stored material (after a root renewal)."""


def renewal_due(material: CaMaterial, now: datetime, threshold: float = RENEWAL_THRESHOLD) -> bool:
    """True when the self-signed root has less than `threshold` of its life left."""
    root = material.signing_cert
    life = root.not_valid_after_utc - root.not_valid_before_utc
    return root.not_valid_after_utc - now < life * threshold


def renewed_root(
    material: CaMaterial,
    trust_domain: TrustDomain,
    now: datetime,
    lifetime: timedelta = ROOT_LIFETIME,
) -> CaMaterial:
    """A new root with the same key and subject; the bundle keeps every unexpired old root."""
    root = self_signed_root(
        key=material.signing_key, trust_domain=trust_domain, now=now, lifetime=lifetime
    )
    kept = tuple(r for r in material.roots if r.not_valid_after_utc > now and r != root)
    return replace(material, signing_cert=root, roots=(root, *kept))


def fingerprint(material: CaMaterial) -> str:
    """Identity of the material for change detection: signing cert, chain and roots."""
    return "|".join(
        [
            sha256_fingerprint(material.signing_cert),
            bundle_pem(material.chain),
            bundle_pem(material.roots),
        ]
    )


class MaterialManager:
    """Owns the current material; `refresh()` reloads it and renews a self-signed root when due.

    Listeners run after every change (publish root-cert.pem, re-issue the serving certificate
    and replace the workers, update ConfigMaps). `may_act` is false on replicas that do not
    hold the leader lease: they neither renew the root nor move the slots, only pick up what
    the leader stored. With a `rotator` (`--ca-rotation new-key`) the CA slots decide what
    signs and what the bundle holds (rotation to a new key) instead of same-key renewal.
    `publish` (root-cert.pem) is given a new material before `current` shows it.
    """

    def __init__(
        self,
        *,
        initial: CaMaterial,
        reload: Callable[[datetime], CaMaterial],
        store: KeyStore | None,
        trust_domain: TrustDomain,
        may_act: Callable[[], bool] = lambda: True,
        threshold: float = RENEWAL_THRESHOLD,
        rotator: SlotRotator | None = None,
        publish: Callable[[CaMaterial], None] = lambda _material: None,
    ) -> None:
        self.rotator = rotator
        self._publish = publish
        self.current = initial
        self._reload = reload
        self._store = store
        self._trust_domain = trust_domain
        self._may_act = may_act
        self._threshold = threshold
        self._listeners: list[Callable[[CaMaterial], None]] = []

    def subscribe(self, listener: Callable[[CaMaterial], None]) -> None:
        self._listeners.append(listener)

    def refresh(self, now: datetime) -> bool:
        """Reload and maybe renew; returns True when the material changed."""
        candidate = self._reload(now)
        if self.rotator is not None:
            candidate = self.rotator.step(candidate, now, may_act=self._may_act())
        elif self._renewable() and renewal_due(candidate, now, self._threshold) and self._may_act():
            candidate = renewed_root(candidate, self._trust_domain, now)
            assert isinstance(self._store, RenewableKeyStore)
            self._store.replace(candidate)
            log.warning(
                "self-signed root renewed (same key); new root expires %s; old roots stay in the bundle",
                candidate.signing_cert.not_valid_after_utc.isoformat(),
            )
        if fingerprint(candidate) == fingerprint(self.current):
            return False
        self._publish(candidate)
        self.current = candidate
        log.info("CA material changed (%s); publishing the new trust bundle", candidate.source)
        for listener in self._listeners:
            listener(candidate)
        return True

    def _renewable(self) -> bool:
        return self._store is not None and isinstance(self._store, RenewableKeyStore)


def describe_failure(exc: BaseException) -> str:
    """One line saying what failed and where: our errors carry the path, OS errors name the file."""
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"cannot use {exc.filename}: {exc.strerror or type(exc).__name__}"
    text = " ".join(str(exc).split())
    return text if text else type(exc).__name__


class ReloadHealth:
    """How re-reading the CA material goes: errors counted, each distinct one logged once.

    Shown in `/readyz` detail and as `bulwark_ca_material_reload_errors_total` and
    `bulwark_ca_material_last_success_timestamp_seconds` on `/metrics`.
    """

    def __init__(self, started_at: float) -> None:
        self.errors_total = 0
        self.last_success = started_at
        self.last_error: str | None = None
        self.failing_checks = 0  # consecutive

    def failed(self, message: str) -> None:
        self.errors_total += 1
        self.failing_checks += 1
        if message != self.last_error:
            log.error(
                "CA material not reloaded, still serving the previous one (retrying every "
                "interval): %s",
                message,
            )
        self.last_error = message

    def succeeded(self, now_ts: float) -> None:
        if self.last_error is not None:
            log.info("CA material read again after %d failed check(s)", self.errors_total)
        self.last_error = None
        self.failing_checks = 0
        self.last_success = now_ts

    def detail(self) -> str:
        """For `/readyz`, which anyone reaching the admin port reads: no file paths (the log
        names the file)."""
        if self.last_error is None:
            return "CA material current"
        return (
            f"CA material reload failing ({self.failing_checks} check(s) in a row), serving "
            "the previous one; the CA log names the file"
        )

    def exposition(self) -> str:
        """The two series in Prometheus text format."""
        errors = "bulwark_ca_material_reload_errors_total"
        success = "bulwark_ca_material_last_success_timestamp_seconds"
        return (
            f"# HELP {errors} Failed checks of the CA material (read, renew, publish)\n"
            f"# TYPE {errors} counter\n{errors} {self.errors_total}\n"
            f"# HELP {success} When the CA material was last checked without error (unix seconds)\n"
            f"# TYPE {success} gauge\n{success} {self.last_success:.3f}\n"
        )
