"""Leader election on a `coordination.k8s.io/v1` Lease, the way client-go's leaderelection does it.

Every replica serves CSRs; only the leader runs the writers (root ConfigMaps, root renewal, CA slots).
A candidate takes the Lease when its holder has not renewed it for `lease_duration` seconds as
observed on the candidate's own monotonic clock (so wall-clock skew between replicas does not
matter). A leader that cannot renew within `renew_deadline` stops being leader at once:
`is_leader()` turns false by itself, even if the renewing thread is stuck in a slow call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx2
from lightkube import ApiError, Client
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from ca_server.kube.settings import DEFAULT_LEASE_NAME, LeaseTiming

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Observed:
    holder: str
    renew_time: datetime | None


class LeaderElector:
    """Runs the election loop on a thread; `is_leader()` is safe to call from any thread."""

    def __init__(
        self,
        client: Client,
        *,
        namespace: str,
        identity: str,
        name: str = DEFAULT_LEASE_NAME,
        timing: LeaseTiming | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._namespace = namespace
        self._name = name
        self._identity = identity
        self._timing = timing or LeaseTiming()
        self._monotonic = monotonic
        self._renewed_at: float | None = None  # monotonic time of our last successful write
        self._observed: _Observed | None = None
        self._observed_at = 0.0
        self._other = ""  # another replica seen holding a live Lease at our last read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def lease(self) -> str:
        return f"{self._namespace}/{self._name}"

    def is_leader(self) -> bool:
        with self._lock:
            renewed = self._renewed_at
        return renewed is not None and self._monotonic() < renewed + self._timing.renew_deadline

    def holder(self) -> str | None:
        """The leader's identity as this replica last saw it in the Lease (its own when it
        leads); None while no replica holds a live Lease."""
        if self.is_leader():
            return self._identity
        with self._lock:
            return self._other or None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lease-elector", daemon=True)
        self._thread.start()

    def stop(self, *, release: bool = True) -> None:
        """Stop campaigning; when leading and `release`, hand the Lease back so another
        replica need not wait out the lease duration."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._timing.renew_deadline)
        was_leader = self.is_leader()
        with self._lock:
            self._renewed_at = None
        if release and was_leader:
            self._release()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = self._monotonic()
            leading_before = self.is_leader()
            if self._try_acquire_or_renew():
                with self._lock:
                    self._renewed_at = started
                if not leading_before:
                    log.info(
                        "became leader of lease %s/%s as %s",
                        self._namespace,
                        self._name,
                        self._identity,
                    )
            elif leading_before and not self.is_leader():
                log.warning("lost lease %s/%s", self._namespace, self._name)
            self._stop.wait(self._timing.retry_period)

    def _try_acquire_or_renew(self) -> bool:
        now = datetime.now(UTC)
        try:
            lease = self._client.get(Lease, self._name, namespace=self._namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                log.warning("reading lease %s: %s", self._name, exc.status.code)
                return False
            return self._create(now)
        except httpx2.HTTPError as exc:
            log.warning("reading lease %s: %s", self._name, type(exc).__name__)
            return False
        spec = lease.spec or LeaseSpec()
        holder = spec.holderIdentity or ""
        if holder and holder != self._identity and not self._expired(spec):
            with self._lock:
                self._renewed_at = None  # someone else holds it: we are certainly not leader
                self._other = holder
            return False
        with self._lock:
            self._other = ""
        taking_over = holder != self._identity
        lease.spec = LeaseSpec(
            holderIdentity=self._identity,
            leaseDurationSeconds=int(self._timing.lease_duration),
            acquireTime=now if taking_over else spec.acquireTime,
            renewTime=now,
            leaseTransitions=(spec.leaseTransitions or 0) + (1 if taking_over and holder else 0),
        )
        return self._write(lease)

    def _expired(self, spec: LeaseSpec) -> bool:
        """Has the holder gone quiet for its lease duration, timed on our own clock?"""
        seen = _Observed(spec.holderIdentity or "", spec.renewTime)
        now = self._monotonic()
        if seen != self._observed:
            self._observed, self._observed_at = seen, now
        duration = spec.leaseDurationSeconds or self._timing.lease_duration
        return now >= self._observed_at + duration

    def _create(self, now: datetime) -> bool:
        lease = Lease(
            metadata=ObjectMeta(name=self._name, namespace=self._namespace),
            spec=LeaseSpec(
                holderIdentity=self._identity,
                leaseDurationSeconds=int(self._timing.lease_duration),
                acquireTime=now,
                renewTime=now,
                leaseTransitions=0,
            ),
        )
        try:
            self._client.create(lease, namespace=self._namespace)
        except ApiError as exc:
            if exc.status.code != 409:
                log.warning("creating lease %s: %s", self._name, exc.status.code)
            return False
        except httpx2.HTTPError as exc:
            log.warning("creating lease %s: %s", self._name, type(exc).__name__)
            return False
        return True

    def _write(self, lease: Lease) -> bool:
        try:
            self._client.replace(lease)
        except ApiError as exc:
            if exc.status.code != 409:  # 409: someone else wrote first; we lost this round
                log.warning("updating lease %s: %s", self._name, exc.status.code)
            return False
        except httpx2.HTTPError as exc:
            log.warning("updating lease %s: %s", self._name, type(exc).__name__)
            return False
        return True

    def _release(self) -> None:
        try:
            lease = self._client.get(Lease, self._name, namespace=self._namespace)
        except (ApiError, httpx2.HTTPError):
            return
        spec = lease.spec or LeaseSpec()
        if spec.holderIdentity != self._identity:
            return
        lease.spec = LeaseSpec(
            holderIdentity="",
            leaseDurationSeconds=1,
            acquireTime=spec.acquireTime,
            renewTime=datetime.now(UTC),
            leaseTransitions=spec.leaseTransitions,
        )
        self._write(lease)


__all__ = ["DEFAULT_LEASE_NAME", "LeaderElector", "LeaseTiming"]
