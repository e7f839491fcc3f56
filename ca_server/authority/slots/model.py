"""CA slots, as SPIRE keeps them: `active` signs, `prepared` is in every trust bundle but does
not sign yet, `retired` signs no more but stays in the bundle until every certificate it
signed has expired.

Everything here is pure: a `SlotState` value, the yes/no deciders the refresher asks
(`should_prepare_next`, `should_activate_next`, `should_drop_retired`) and the verbs that
return the next state (`prepare`, `activate`, `retire`). The clock is always passed in,
so a table test walks a rotation through years in microseconds. Storage lives in
`ca_server.authority.slots.store`; the refresher (`ca_server.authority.refresh`) wires the two.

    prepare            activate                  retire (drop)
  ----------> prepared ---------> active ---------> retired ---------> gone
  (in bundle,          (signs; the old active   (in bundle until the last
   not signing)         becomes retired)         certificate it signed expired)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from cryptography import x509

from ca_server.authority.material import CaMaterial
from ca_server.options import default
from certs.keys import PrivateKey
from certs.pem import sha256_fingerprint


class SlotError(Exception):
    """A rotation verb that does not apply to the current state; the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Authority:
    """One CA: the certificate that signs leaves, its key, the certificates between it and its
    trust anchors, and the anchors (what this authority adds to the trust bundle). Equal when
    the certificates are (key objects do not compare; the key matches the certificate)."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()
    anchors: tuple[x509.Certificate, ...]

    @property
    def id(self) -> str:
        """Stable name of the authority: its certificate's SHA-256 (hex)."""
        return sha256_fingerprint(self.cert).replace(":", "").lower()

    def _identity(self) -> tuple[str, ...]:
        return (
            self.id,
            *("c" + sha256_fingerprint(c) for c in self.chain),
            *("a" + sha256_fingerprint(a) for a in self.anchors),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Authority) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    @classmethod
    def of(cls, material: CaMaterial) -> Authority:
        return cls(
            cert=material.signing_cert,
            key=material.signing_key,
            chain=material.chain,
            anchors=material.roots,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Slot:
    authority: Authority
    since: datetime  # when it entered this slot
    until: datetime | None = None  # retired only: when its last certificate has expired


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotState:
    active: Slot
    prepared: Slot | None = None
    retired: Slot | None = None

    def bundle(self) -> tuple[x509.Certificate, ...]:
        """Every anchor of every slot, active first, each once."""
        seen: set[str] = set()
        out: list[x509.Certificate] = []
        for slot in (self.active, self.prepared, self.retired):
            for anchor in slot.authority.anchors if slot else ():
                fp = sha256_fingerprint(anchor)
                if fp not in seen:
                    seen.add(fp)
                    out.append(anchor)
        return tuple(out)

    def material(self, source: str) -> CaMaterial:
        """What the workers sign with (the active authority) and send as the root bundle."""
        active = self.active.authority
        return CaMaterial(
            signing_cert=active.cert,
            signing_key=active.key,
            chain=active.chain,
            roots=self.bundle(),
            source=source,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotPolicy:
    """When the refresher rotates the CA to a new key on its own: moves the slots (`new-key` mode)."""

    # The defaults of `ca serve` (ca_server.options says why they are what they are).
    prepare_at: float = default("ca_prepare_at")  # fraction of the active CA's life
    propagation_delay: timedelta = default("ca_propagation_delay")
    max_ttl: timedelta = default("max_ttl")  # longest leaf the CA signs

    def __post_init__(self) -> None:
        if not 0.0 < self.prepare_at <= 1.0:
            raise ValueError("the prepare point must be a fraction of the CA's life in (0, 1]")
        if self.propagation_delay < timedelta(0):
            raise ValueError("the propagation delay cannot be negative")


def life_used(cert: x509.Certificate, now: datetime) -> float:
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    if life <= timedelta(0):
        return 1.0
    return (now - cert.not_valid_before_utc) / life


def should_prepare_next(state: SlotState, now: datetime, policy: SlotPolicy) -> bool:
    """The active CA has lived `prepare_at` of its life and no rotation is under way."""
    if state.prepared is not None or state.retired is not None:
        return False
    return life_used(state.active.authority.cert, now) >= policy.prepare_at


def should_activate_next(state: SlotState, now: datetime, policy: SlotPolicy) -> bool:
    """The prepared CA has been in the published bundle for the propagation delay, and the
    previous retired CA (if any) may leave the bundle first."""
    if state.prepared is None:
        return False
    if state.retired is not None and not should_drop_retired(state, now):
        return False
    return now - state.prepared.since >= policy.propagation_delay


def should_drop_retired(state: SlotState, now: datetime) -> bool:
    """Every certificate the retired CA signed has expired."""
    retired = state.retired
    return retired is not None and retired.until is not None and now >= retired.until


def prepare(state: SlotState, authority: Authority, now: datetime) -> SlotState:
    """Put `authority` in the bundle without letting it sign."""
    if state.prepared is not None:
        raise SlotError(
            f"a CA is already prepared (since {_iso(state.prepared.since)}): activate it first"
        )
    if authority.id == state.active.authority.id:
        raise SlotError("the new CA is the active one: nothing to prepare")
    if authority.cert.not_valid_after_utc <= now:
        raise SlotError("the new CA certificate has already expired")
    return replace(state, prepared=Slot(authority=authority, since=now))


def activate(
    state: SlotState, now: datetime, policy: SlotPolicy, *, force: bool = False
) -> SlotState:
    """Sign with the prepared CA; the active one becomes retired until its last leaf expires.

    Refused before the propagation delay (an agent may not trust the new CA yet) unless
    `force`, and while a retired CA still has live certificates (it would leave the bundle).
    """
    prepared = state.prepared
    if prepared is None:
        raise SlotError("no CA is prepared: run prepare first")
    if state.retired is not None and not should_drop_retired(state, now):
        raise SlotError(
            "the previous CA is still retired with live certificates until "
            f"{_iso(state.retired.until)}; activate after that"
        )
    waited = now - prepared.since
    if waited < policy.propagation_delay and not force:
        raise SlotError(
            f"the prepared CA has been in the bundle {_secs(waited)}, less than the "
            f"propagation delay {_secs(policy.propagation_delay)}: agents may not trust it yet "
            "(force to activate anyway)"
        )
    old = state.active.authority
    last_leaf = min(now + policy.max_ttl, old.cert.not_valid_after_utc)
    return SlotState(
        active=Slot(authority=prepared.authority, since=now),
        prepared=None,
        retired=Slot(authority=old, since=now, until=last_leaf),
    )


def retire(state: SlotState, now: datetime, *, force: bool = False) -> SlotState:
    """Drop the retired CA from the bundle; before its last leaf expired only with `force`
    (a compromised CA: its certificates stop verifying at once)."""
    retired = state.retired
    if retired is None:
        raise SlotError("no CA is retired: activate a prepared CA first")
    if not should_drop_retired(state, now) and not force:
        raise SlotError(
            f"certificates of the retired CA stay valid until {_iso(retired.until)}; dropping "
            "it now breaks them (force to drop anyway, e.g. after a compromise)"
        )
    return replace(state, retired=None)


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment is not None else "(unknown)"


def _secs(delta: timedelta) -> str:
    return f"{delta.total_seconds():.0f}s"


def describe(state: SlotState, now: datetime, policy: SlotPolicy) -> dict[str, object]:
    """The state as plain JSON-ready values (no key material), for the admin API and CLI."""

    def slot(s: Slot | None) -> dict[str, object] | None:
        if s is None:
            return None
        cert = s.authority.cert
        return {
            "id": s.authority.id,
            "subject": cert.subject.rfc4514_string(),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "since": s.since.isoformat(),
            "until": s.until.isoformat() if s.until else None,
        }

    nxt = "none"
    if should_drop_retired(state, now):
        nxt = "retire"
    elif should_activate_next(state, now, policy):
        nxt = "activate"
    elif should_prepare_next(state, now, policy):
        nxt = "prepare"
    return {
        "active": slot(state.active),
        "prepared": slot(state.prepared),
        "retired": slot(state.retired),
        "bundle": [sha256_fingerprint(c) for c in state.bundle()],
        "propagation_delay_seconds": policy.propagation_delay.total_seconds(),
        "due": nxt,
    }


__all__ = [
    "Authority",
    "Slot",
    "SlotError",
    "SlotPolicy",
    "SlotState",
    "activate",
    "describe",
    "prepare",
    "retire",
    "should_activate_next",
    "should_drop_retired",
    "should_prepare_next",
]
