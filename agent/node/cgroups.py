"""The pod UID and container ID in a process's cgroup path, as the kubelet names them.

docs/COMPATIBILITY.md §4 lists the forms: the cgroupfs driver's
`/kubepods/<qos>/pod<uid>/<container-id>` (guaranteed pods directly under `/kubepods/`),
the systemd driver's `/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid with _>.slice/
<runtime>-<container-id>.scope` (runtime `cri-containerd`, `crio` or `docker`), each possibly
below a prefix (a node in a container, kind's `kubelet.slice`). `/proc/<pid>/cgroup` has one
line per v1 hierarchy (`N:controllers:/path`) or the single v2 line `0::/path`. Every line
that names a pod must name the same pod and container; the container must be the last
segment (a sub-cgroup of a container is not the container). Nothing here reads a file.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_UUID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
_POD = re.compile(rf"((?:[a-z]+-)*)pod({_UUID})(?:\.slice)?")
_CONTAINER = re.compile(r"(?:(?:cri-containerd|crio|docker)-)?([0-9a-f]{64})(?:\.scope)?")


class PodContainer(NamedTuple):
    """Where a process runs: its pod's UID (with dashes) and its container's ID (64 hex)."""

    pod_uid: str
    container_id: str


class AmbiguousCgroup(ValueError):
    """The hierarchies of one process name different pods or containers."""


def pod_container_of_path(path: str) -> PodContainer | None:
    """The pod and container one cgroup path names, or None if it is not a pod's container."""
    segments = [s for s in path.split("/") if s]
    if len(segments) < 3 or not any("kubepods" in s for s in segments[:-2]):
        return None
    pod = _POD.fullmatch(segments[-2])
    container = _CONTAINER.fullmatch(segments[-1])
    if pod is None or container is None:
        return None
    prefix = pod.group(1)  # the systemd driver's `kubepods-<qos>-`
    if prefix and not prefix.startswith(("kubepods-", "kubelet-kubepods-")):
        return None
    return PodContainer(pod.group(2).replace("_", "-"), container.group(1))


def pod_container(cgroup: str) -> PodContainer | None:
    """The pod and container of `/proc/<pid>/cgroup` text; None when no line names one;
    `AmbiguousCgroup` when lines disagree."""
    found: set[PodContainer] = set()
    for line in cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        located = pod_container_of_path(parts[2])
        if located is not None:
            found.add(located)
    if len(found) > 1:
        raise AmbiguousCgroup(
            "the process's cgroup hierarchies name different containers: "
            + ", ".join(sorted(f"pod {p.pod_uid} container {p.container_id[:12]}" for p in found))
        )
    return found.pop() if found else None


def cgroup_paths(cgroup: str) -> list[str]:
    """The distinct paths of `/proc/<pid>/cgroup` text, for a refusal message."""
    paths = [line.split(":", 2)[2] for line in cgroup.splitlines() if line.count(":") >= 2]
    return list(dict.fromkeys(paths))
