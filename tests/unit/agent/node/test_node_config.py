"""Node mode's settings: what --mode node needs, and each bad value named (exit 2 at start)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.errors import ConfigError

UNIX: dict[str, Any] = {"mode": "node", "attestor": "unix", "unix_identities": Path("ids.yaml")}
K8S: dict[str, Any] = {
    "mode": "node",
    "attestor": "k8s",
    "node_name": "node-1",
    "kube_service_host": "10.0.0.1",
}


def test_node_mode_defaults() -> None:
    config = AgentConfig(**K8S)
    assert (config.node_socket_mode, config.node_socket_dir_mode) == (0o666, 0o755)
    assert (config.max_identities, config.max_connections) == (512, 4096)
    assert (config.max_caller_connections, config.max_caller_streams) == (64, 128)
    assert config.allow_host_pods is False
    assert config.ca_batch_max == 64  # the CA's default --batch-max-certificates
    assert AgentConfig().mode == "pod"  # the per-pod agent stays the default


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"mode": "cluster"}, "--mode 'cluster' must be pod or node"),
        ({**UNIX, "attestor": "spire"}, "must be k8s or unix"),
        ({**UNIX, "unix_identities": None}, "--attestor unix needs --unix-identities"),
        ({**K8S, "node_name": ""}, "NODE_NAME or --node-name"),
        ({**K8S, "kube_service_host": ""}, "--kubeconfig, or KUBERNETES_SERVICE_HOST"),
        ({**UNIX, "output_certs_dir": Path("out")}, "a node agent serves many"),
        ({**UNIX, "file_mounted_certs": True}, "a node agent serves many"),
        ({**UNIX, "node_socket_mode": 0o1777}, "BULWARK_NODE_SOCKET_MODE 1777"),
        ({**UNIX, "node_socket_mode": 0o066}, "with owner read-write"),
        ({**UNIX, "node_socket_dir_mode": 0o055}, "BULWARK_NODE_SOCKET_DIR_MODE"),
        ({**UNIX, "max_identities": 0}, "--max-identities 0 must be at least 1"),
        ({**UNIX, "max_caller_streams": -1}, "--max-caller-streams"),
        ({**UNIX, "key_pool": 65}, "--key-pool 65"),
        ({**UNIX, "ca_batch_max": 0}, "--ca-batch-max 0 must be at least 1"),
    ],
)
def test_bad_node_settings_say_what_is_wrong(settings: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as refused:
        AgentConfig(**settings)
    assert fragment in refused.value.public_message


def test_node_settings_are_ignored_in_pod_mode() -> None:
    """A per-pod agent whose environment names a node (NODE_NAME is common) starts as before."""
    config = AgentConfig.from_env(
        {"NODE_NAME": "node-1", "KUBECONFIG": "/x", "BULWARK_NODE_MAX_IDENTITIES": "0"}
    )
    assert config.mode == "pod" and config.node_name == "node-1"
