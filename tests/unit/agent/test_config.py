"""AgentConfig: Istio's variable names and defaults, Go durations, flag overrides."""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path

import pytest

import agent.cli.commands as cli
from agent.config import AgentConfig, parse_duration
from agent.errors import ConfigError
from certs.keys import KeyType


def test_defaults_are_istios() -> None:
    config = AgentConfig.from_env({})
    assert str(config.spiffe_id) == "spiffe://cluster.local/ns/default/sa/default"
    assert config.ca_addr == "istiod.istio-system.svc:15012"
    assert config.ca_uses_tls
    assert config.ca_server_name == "istiod.istio-system.svc"
    assert config.ca_root_candidates() == (Path("./var/run/secrets/istio/root-cert.pem"),)
    assert config.token_path == Path("./var/run/secrets/tokens/istio-token")
    assert config.socket_path == Path("./var/run/secrets/workload-spiffe-uds/socket")
    assert config.secret_ttl == timedelta(hours=24)
    assert (config.grace_ratio, config.grace_jitter) == (0.5, 0.01)
    assert config.key_type() is KeyType.RSA_2048
    assert config.cluster_id == "Kubernetes"


def test_an_empty_status_address_turns_the_status_server_off() -> None:
    assert AgentConfig.from_env({}).status_addr == "127.0.0.1:15020"
    assert AgentConfig.from_env({"BULWARK_AGENT_STATUS_ADDR": ""}).status_addr == ""
    assert (
        AgentConfig.from_env({"BULWARK_AGENT_STATUS_ADDR": "0.0.0.0:1"}).status_addr == "0.0.0.0:1"
    )


def test_environment_is_read() -> None:
    config = AgentConfig.from_env(
        {
            "TRUST_DOMAIN": "example.org",
            "POD_NAMESPACE": "demo",
            "SERVICE_ACCOUNT": "frontend",
            "CA_ADDR": "ca.example:15010",
            "ISTIOD_SAN": "istiod.example",
            "PROV_CERT": "/prov",
            "SECRET_TTL": "1h30m",
            "SECRET_GRACE_PERIOD_RATIO": "0.4",
            "SECRET_GRACE_PERIOD_RATIO_JITTER": "0.05",
            "ECC_SIGNATURE_ALGORITHM": "ECDSA",
            "ECC_CURVE": "P384",
            "ISTIO_META_CLUSTER_ID": "east",
            "ISTIO_META_CERT_SIGNER": "signer-a",
            "CA_HEADER_X-Tenant": "blue",
            "WORKLOAD_IDENTITY_SOCKET_FILE": "agent.sock",
            "FILE_MOUNTED_CERTS": "false",
        }
    )
    assert str(config.spiffe_id) == "spiffe://example.org/ns/demo/sa/frontend"
    assert not config.ca_uses_tls
    assert config.ca_server_name == "istiod.example"
    assert config.secret_ttl == timedelta(minutes=90)
    assert config.key_type() is KeyType.EC_P384
    assert config.ca_headers == (("x-tenant", "blue"),)
    assert config.socket_path.name == "agent.sock"
    assert config.ca_root_candidates()[-1] == Path("/prov/root-cert.pem")
    assert (config.cluster_id, config.cert_signer) == ("east", "signer-a")


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"SECRET_TTL": "soon"}, "SECRET_TTL"),
        ({"SECRET_TTL": "0s"}, "SECRET_TTL must be positive"),
        ({"SECRET_GRACE_PERIOD_RATIO": "1.5"}, "SECRET_GRACE_PERIOD_RATIO"),
        ({"WORKLOAD_RSA_KEY_SIZE": "1024"}, "WORKLOAD_RSA_KEY_SIZE"),
        ({"ECC_SIGNATURE_ALGORITHM": "ECDSA", "ECC_CURVE": "P521"}, "ECC_CURVE"),
        ({"POD_NAMESPACE": "Bad/NS"}, "POD_NAMESPACE"),
        ({"CA_ADDR": "nowhere"}, "CA_ADDR"),
        ({"WORKLOAD_IDENTITY_SOCKET_FILE": "a/b"}, "WORKLOAD_IDENTITY_SOCKET_FILE"),
        ({"FILE_MOUNTED_CERTS": "maybe"}, "FILE_MOUNTED_CERTS"),
    ],
)
def test_bad_values_say_what_is_wrong(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        AgentConfig.from_env(env)


def test_go_durations() -> None:
    assert parse_duration("24h", "x") == timedelta(hours=24)
    assert parse_duration("1h0m0s", "x") == timedelta(hours=1)
    assert parse_duration("500ms", "x") == timedelta(milliseconds=500)
    assert parse_duration("90", "x") == timedelta(seconds=90)


def test_flags_override_environment() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cli.register(sub)
    args = parser.parse_args(
        [
            "agent",
            "run",
            "--namespace",
            "other",
            "--secret-ttl",
            "10s",
            "--ca-header",
            "X-Extra=1",
            "--socket",
            "/tmp/x.sock",
        ]
    )
    config = cli.config_from(args, {"POD_NAMESPACE": "demo", "CA_HEADER_A": "b"})
    assert config.namespace == "other"
    assert config.secret_ttl == timedelta(seconds=10)
    assert config.ca_headers == (("a", "b"), ("x-extra", "1"))
    assert config.socket_path == Path("/tmp/x.sock")
    assert str(config.spiffe_id).endswith("/ns/other/sa/default")
