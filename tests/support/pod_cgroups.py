"""Pods without a kubelet: API objects bound to a node, their status set through the status
subresource, and real processes in real cgroups named the way the kubelet names them.

The kubelet's cgroupfs driver puts a best-effort pod's container at
`/kubepods/besteffort/pod<uid>/<container-id>` (docs/COMPATIBILITY.md §4). On this machine's
cgroup v1 that is a directory of the `pids` hierarchy; on cgroup v2 of the unified one. A
process joins by writing its pid to `cgroup.procs` before it runs the workload (so the node
agent sees it there from its first connection). `close` kills the processes and removes the
directories it made.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightkube import Client
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod
from lightkube.types import PatchType

from tests.support.ca_process import REPO, tree_env


def cgroup_root() -> Path:
    """The hierarchy the test pods' cgroups go in: v1 `pids`, else the v2 unified tree."""
    v1 = Path("/sys/fs/cgroup/pids")
    if (v1 / "cgroup.procs").exists():
        return v1
    v2 = Path("/sys/fs/cgroup")
    if (v2 / "cgroup.controllers").exists():
        return v2
    raise RuntimeError("no writable cgroup hierarchy at /sys/fs/cgroup (pids v1 or unified v2)")


@dataclass
class NodePod:
    namespace: str
    name: str
    uid: str
    service_account: str
    node: str
    container_id: str = field(default_factory=lambda: secrets.token_hex(32))

    @property
    def cgroup(self) -> Path:
        return cgroup_root() / "kubepods" / "besteffort" / f"pod{self.uid}" / self.container_id


class PodProcesses:
    """Creates pods and runs processes in their containers' cgroups; cleans up after itself."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._processes: list[subprocess.Popen[Any]] = []
        self._made: list[Path] = []

    def create(
        self,
        namespace: str,
        account: str,
        node: str,
        *,
        running: bool = True,
        host_network: bool = False,
    ) -> NodePod:
        name = f"{account}-{uuid.uuid4().hex[:6]}"
        created = self.client.create(
            Pod(
                metadata=ObjectMeta(name=name, namespace=namespace),
                spec=PodSpec(
                    serviceAccountName=account,
                    nodeName=node,
                    hostNetwork=host_network,
                    containers=[Container(name="app", image="registry.invalid/app:1")],
                ),
            )
        )
        assert created.metadata is not None and created.metadata.uid
        pod = NodePod(namespace, name, created.metadata.uid, account, node)
        if running:
            self.set_running(pod)
        return pod

    def set_running(self, pod: NodePod, *, container_id: str | None = None) -> None:
        """What the kubelet would write once the container runs: phase and containerStatuses."""
        cid = container_id or pod.container_id
        status = {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "app",
                    "containerID": f"containerd://{cid}",
                    "image": "registry.invalid/app:1",
                    "imageID": "",
                    "ready": True,
                    "restartCount": 0,
                    "started": True,
                    "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
                }
            ],
        }
        self.client.patch(
            Pod.Status,
            pod.name,
            {"status": status},
            namespace=pod.namespace,
            patch_type=PatchType.MERGE,
        )

    def set_phase(self, pod: NodePod, phase: str) -> None:
        self.client.patch(
            Pod.Status,
            pod.name,
            {"status": {"phase": phase}},
            namespace=pod.namespace,
            patch_type=PatchType.MERGE,
        )

    def delete(self, pod: NodePod) -> None:
        self.client.delete(Pod, pod.name, namespace=pod.namespace, grace_period=0)

    def make_cgroup(self, pod: NodePod) -> Path:
        path = pod.cgroup
        for directory in (*reversed(path.parents[:3]), path):
            if not directory.exists():
                directory.mkdir()
                self._made.append(directory)
        return path

    def joiner(self, pod: NodePod) -> Callable[[], None]:
        """A `preexec_fn` that puts the child into `pod`'s container cgroup before it execs."""
        procs = self.make_cgroup(pod) / "cgroup.procs"

        def join() -> None:
            procs.write_text("0")  # "0": the writing process itself

        return join

    def spawn(self, pod: NodePod, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Run `argv` inside `pod`'s container cgroup (it joins before it execs)."""
        popen.setdefault("env", {**tree_env(os.environ), "HOME": "/tmp"})
        popen.setdefault("cwd", REPO)
        process = subprocess.Popen(list(argv), preexec_fn=self.joiner(pod), **popen)
        self._processes.append(process)
        return process

    def move(self, pid: int, pod: NodePod) -> None:
        """Move a running process into another pod's container cgroup."""
        (self.make_cgroup(pod) / "cgroup.procs").write_text(str(pid))

    def close(self) -> None:
        for process in self._processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        for directory in sorted(self._made, key=lambda p: len(p.parts), reverse=True):
            for _ in range(50):  # a killed process leaves its cgroup a moment after it is reaped
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
