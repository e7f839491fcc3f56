"""Rotation to a new key (`--ca-rotation new-key`): the refresher's and the operator's verbs on
the CA slots, applied to the stored state under one lock.

The refresher calls `step()` on every check: it adopts what the loaded material says (first
start, or a new plugged-in `cacerts` set, which is only ever *prepared*), then asks the pure
deciders of `ca_server.authority.slots.model` whether to prepare, activate or drop, and stores the result.
Replicas that do not lead only read the stored state. The admin API calls `prepare`,
`activate` and `retire` for an operator-driven rotation.

Every new state's trust bundle is published (`publish`: root-cert.pem) *before* the state
is stored, so whoever reads the stored state (`/v1/ca/rotation`) never sees a bundle change
the file does not hold yet; a failure in between leaves the file ahead, and the next check
writes it again from the stored state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from ca_server.authority.material import CaMaterial, create_self_signed
from ca_server.authority.slots.model import (
    Authority,
    Slot,
    SlotError,
    SlotPolicy,
    SlotState,
    activate,
    describe,
    prepare,
    retire,
    should_activate_next,
    should_drop_retired,
    should_prepare_next,
)
from ca_server.authority.slots.store import SlotStore
from certs.spiffe_id import TrustDomain

log = logging.getLogger(__name__)


class SlotRotator:
    """Owns the slot state of one CA. `self_signed` says whether a new CA can be made here
    (a plugged-in CA's next authority comes from its `cacerts` files instead)."""

    def __init__(
        self,
        *,
        store: SlotStore,
        policy: SlotPolicy,
        trust_domain: TrustDomain,
        self_signed: bool,
        new_authority: Callable[[datetime], Authority] | None = None,
        publish: Callable[[CaMaterial], None] = lambda _material: None,
    ) -> None:
        self._store = store
        self.policy = policy
        self._trust_domain = trust_domain
        self._self_signed = self_signed
        self._new_authority = new_authority or self._fresh_root
        self._publish = publish
        self._source = "slots"  # the loaded material's source, named by the material served
        self._lock = threading.Lock()

    def _fresh_root(self, now: datetime) -> Authority:
        return Authority.of(create_self_signed(self._trust_domain, now))

    def step(self, loaded: CaMaterial, now: datetime, *, may_act: bool) -> CaMaterial:
        """The material to serve after adopting `loaded` and any transition that is due."""
        with self._lock:
            self._source = loaded.source
            stored = self._store.load_state()
            state = stored or SlotState(active=Slot(authority=Authority.of(loaded), since=now))
            if may_act:
                state = self._adopt(state, loaded, now)
                state = self._automatic(state, now)
                if state != stored:
                    self._store_published(state)
            return state.material(loaded.source)

    def _store_published(self, state: SlotState) -> None:
        """Publish `state`'s trust bundle, then store `state` (the order the module doc gives)."""
        self._publish(state.material(self._source))
        self._store.save_state(state)

    def _adopt(self, state: SlotState, loaded: CaMaterial, now: datetime) -> SlotState:
        """A plugged-in set unlike every slot becomes the prepared CA (never the active one)."""
        if self._self_signed:
            return state
        candidate = Authority.of(loaded)
        known = {s.authority.id for s in (state.active, state.prepared, state.retired) if s}
        if candidate.id in known:
            return state
        if state.prepared is not None:
            log.error(
                "new plugged-in CA files, but another CA is already prepared; activate or "
                "restore it first: the new files are ignored until then"
            )
            return state
        log.warning("new plugged-in CA files taken as the prepared CA (in the bundle, not signing)")
        return prepare(state, candidate, now)

    def _automatic(self, state: SlotState, now: datetime) -> SlotState:
        if should_drop_retired(state, now):
            log.warning("retired CA dropped from the trust bundle: its last certificate expired")
            state = retire(state, now)
        if should_activate_next(state, now, self.policy):
            state = activate(state, now, self.policy)
            log.warning(
                "prepared CA activated after %ss in the bundle; the previous CA is retired until %s",
                f"{self.policy.propagation_delay.total_seconds():.0f}",
                state.retired.until.isoformat() if state.retired and state.retired.until else "?",
            )
        if self._self_signed and should_prepare_next(state, now, self.policy):
            state = prepare(state, self._new_authority(now), now)
            log.warning("new root (new key) prepared: in the trust bundle, not signing yet")
        return state

    def _apply(self, verb: Callable[[SlotState], SlotState]) -> SlotState:
        with self._lock:
            state = self._store.load_state()
            if state is None:
                raise SlotError("the CA has not stored its slots yet; retry after its first check")
            state = verb(state)
            self._store_published(state)
            return state

    def status(self, now: datetime) -> dict[str, object]:
        with self._lock:
            state = self._store.load_state()
        if state is None:
            raise SlotError("the CA has not stored its slots yet; retry after its first check")
        return describe(state, now, self.policy)

    def prepare(self, now: datetime) -> dict[str, object]:
        if not self._self_signed:
            raise SlotError(
                "a plugged-in CA is prepared by writing the new set into its cacerts directory"
            )
        state = self._apply(lambda s: prepare(s, self._new_authority(now), now))
        log.warning("operator prepared a new root (new key): in the trust bundle, not signing yet")
        return describe(state, now, self.policy)

    def activate(self, now: datetime, *, force: bool) -> dict[str, object]:
        state = self._apply(lambda s: activate(s, now, self.policy, force=force))
        log.warning("operator activated the prepared CA (force=%s)", force)
        return describe(state, now, self.policy)

    def retire(self, now: datetime, *, force: bool) -> dict[str, object]:
        state = self._apply(lambda s: retire(s, now, force=force))
        log.warning("operator dropped the retired CA from the trust bundle (force=%s)", force)
        return describe(state, now, self.policy)


__all__ = ["SlotRotator"]
