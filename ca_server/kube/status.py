"""What the CA knows of each cluster it serves, for `/v1/ca`, `/ui` and `/metrics`.

Kept free of lightkube so the admin app can name the type without importing a client.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterStatus:
    """One cluster as the supervisor last saw it."""

    cluster_id: str
    local: bool  # the CA's own cluster (--cluster-id), not a remote secret's
    source: str  # "local" or "secret <namespace>/<name>"
    server: str = ""  # API server URL, when known
    reachable: bool | None = None  # None: not probed yet
    last_sync: float | None = None  # epoch seconds of the last successful call to its API
    error: str = ""  # why it is unusable or unreachable ("" when fine)


UP_GAUGE = "bulwark_ca_remote_cluster_up"
SYNC_GAUGE = "bulwark_ca_remote_cluster_last_sync_timestamp_seconds"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def exposition(statuses: Iterable[ClusterStatus]) -> str:
    """The remote clusters' gauges: up (1 reachable, 0 not: unreachable, refused or a broken
    kubeconfig) and the time of the last successful call, by `cluster`."""
    remote = [s for s in statuses if not s.local]
    lines = [
        f"# HELP {UP_GAUGE} Whether the CA reaches a remote cluster's API server (1) or not (0)",
        f"# TYPE {UP_GAUGE} gauge",
    ]
    lines += [
        f'{UP_GAUGE}{{cluster="{_label(s.cluster_id)}"}} {int(bool(s.reachable))}' for s in remote
    ]
    lines += [
        f"# HELP {SYNC_GAUGE} When the CA last reached a remote cluster's API server (unix seconds)",
        f"# TYPE {SYNC_GAUGE} gauge",
    ]
    lines += [
        f'{SYNC_GAUGE}{{cluster="{_label(s.cluster_id)}"}} {s.last_sync:.3f}'
        for s in remote
        if s.last_sync is not None
    ]
    return "\n".join(lines) + "\n"


class ClusterViews(Protocol):
    """What the admin app shows of the clusters (`KubeControllers`, or `NO_CLUSTERS`)."""

    def cluster_statuses(self) -> list[ClusterStatus]: ...

    def cluster_exposition(self) -> str: ...


class _NoClusters:
    """A CA without Kubernetes serves no clusters."""

    def cluster_statuses(self) -> list[ClusterStatus]:
        return []

    def cluster_exposition(self) -> str:
        return ""


NO_CLUSTERS: ClusterViews = _NoClusters()

__all__ = ["NO_CLUSTERS", "SYNC_GAUGE", "UP_GAUGE", "ClusterStatus", "ClusterViews", "exposition"]
