"""The kubelet's cgroup paths (docs/COMPATIBILITY.md §4) -> pod UID and container ID, as a table.

cgroup v1 (one line per hierarchy) and v2 (`0::/path`); the cgroupfs and systemd drivers;
containerd, CRI-O and docker container IDs; guaranteed pods; a node inside a container
(kind); and the paths that must give nothing (a host process, CRI-O's conmon, a sub-cgroup of
a container, a look-alike outside kubepods) or refuse (hierarchies naming two containers).
"""

from __future__ import annotations

import pytest

from agent.node.cgroups import AmbiguousCgroup, PodContainer, pod_container

UID = "2b9c6c1e-6f0a-4a5e-9d6b-1f2e3d4c5b6a"
UNDERSCORED = UID.replace("-", "_")
CID = "4f1a" + "b" * 60
OTHER = "9e" + "c" * 62
FOUND = PodContainer(UID, CID)


def v1(path: str, *, other: str = "/") -> str:
    """A cgroup v1 /proc/<pid>/cgroup: `path` on every hierarchy but one named `other`."""
    return "\n".join(
        [
            f"12:pids:{path}",
            f"11:memory:{path}",
            f"10:cpu,cpuacct:{path}",
            f"9:devices:{path}",
            f"1:name=systemd:{path}",
            f"0::{other}",
        ]
    )


CASES = [
    ("v1 cgroupfs besteffort", v1(f"/kubepods/besteffort/pod{UID}/{CID}"), FOUND),
    ("v1 cgroupfs burstable", v1(f"/kubepods/burstable/pod{UID}/{CID}"), FOUND),
    ("v1 cgroupfs guaranteed", v1(f"/kubepods/pod{UID}/{CID}"), FOUND),
    (
        "v1 systemd containerd",
        v1(
            f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UNDERSCORED}.slice/"
            f"cri-containerd-{CID}.scope"
        ),
        FOUND,
    ),
    ("v2 cgroupfs", f"0::/kubepods/burstable/pod{UID}/{CID}\n", FOUND),
    (
        "v2 systemd containerd",
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UNDERSCORED}.slice/"
        f"cri-containerd-{CID}.scope\n",
        FOUND,
    ),
    (
        "v2 systemd cri-o",
        f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UNDERSCORED}.slice/"
        f"crio-{CID}.scope",
        FOUND,
    ),
    (
        "v2 systemd docker guaranteed",
        f"0::/kubepods.slice/kubepods-pod{UNDERSCORED}.slice/docker-{CID}.scope",
        FOUND,
    ),
    (
        "v2 kind node (kubelet.slice)",
        "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
        f"kubelet-kubepods-besteffort-pod{UNDERSCORED}.slice/cri-containerd-{CID}.scope",
        FOUND,
    ),
    (
        "v1 node in a docker container",
        v1(f"/docker/{OTHER}/kubepods/besteffort/pod{UID}/{CID}"),
        FOUND,
    ),
    (
        "v1 only the pids hierarchy moved",
        f"8:pids:/kubepods/besteffort/pod{UID}/{CID}\n4:memory:/x\n0::/",
        FOUND,
    ),
    ("host process v1", v1("/user.slice/user-0.slice/session-1.scope"), None),
    ("host process v2", "0::/system.slice/ssh.service\n", None),
    ("root cgroup", "0::/\n", None),
    ("the pod's own cgroup, no container", f"0::/kubepods/besteffort/pod{UID}\n", None),
    (
        "CRI-O's conmon beside the container",
        f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UNDERSCORED}.slice/"
        f"crio-conmon-{CID}.scope",
        None,
    ),
    ("a sub-cgroup of the container", f"0::/kubepods/besteffort/pod{UID}/{CID}/init.scope", None),
    ("look-alike outside kubepods", f"0::/system.slice/pod{UID}/{CID}", None),
    ("short container id", f"0::/kubepods/besteffort/pod{UID}/{CID[:40]}", None),
    ("not a uuid", f"0::/kubepods/besteffort/podnot-a-uid/{CID}", None),
    ("empty", "", None),
    ("garbage lines", "no colons here\n::\n1:x", None),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cgroup_paths(text: str, expected: PodContainer | None) -> None:
    assert pod_container(text) == expected


def test_hierarchies_naming_two_containers_are_refused() -> None:
    text = f"12:pids:/kubepods/besteffort/pod{UID}/{CID}\n11:memory:/kubepods/besteffort/pod{UID}/{OTHER}"
    with pytest.raises(AmbiguousCgroup, match="different containers"):
        pod_container(text)
