"""What the supervisor's `/readyz` asks: the workers, the material checks, an HSM-held key and
the issuance record's write path."""

from __future__ import annotations

from dataclasses import dataclass

from ca_server.authority.refresh import ReloadHealth
from ca_server.hsm.readiness import HsmReadiness
from ca_server.process.pool import WorkerPool
from ca_server.process.worker import WorkerKeys, WorkerSpec
from ca_server.record.ledger.health import RecordProbe


@dataclass(frozen=True, slots=True, kw_only=True)
class Readiness:
    """What `/readyz` asks: the workers, the material checks, an HSM-held key and the record."""

    pool: WorkerPool[WorkerSpec, WorkerKeys]
    health: ReloadHealth
    hsm: HsmReadiness
    record: RecordProbe

    def __call__(self) -> tuple[bool, str]:
        """Ready while every worker serves, the CA key signs and the record takes commits; the
        detail also says how the material checks go."""
        ready, detail = self.pool.readiness()
        committing, record = self.record.detail()
        parts = [detail, record, self.health.detail(), self.hsm.detail()]
        return ready and self.hsm.ready and committing, "; ".join(p for p in parts if p)
