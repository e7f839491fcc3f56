"""One authenticator plan: what /v1/ca reports is what the workers build, from the config alone."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from ca_server.admin.wiring import authenticator_names
from ca_server.authn.local_issuer import LocalIssuer
from ca_server.authn.plan import authenticator_plan, build_authentication
from ca_server.authority.material import create_self_signed
from ca_server.cli.serve import config_from_args
from ca_server.config import CaConfig
from certs.cli import build_parser


def serve_config(*flags: str) -> CaConfig:
    args = build_parser().parse_args(["ca", "serve", *flags])
    config: CaConfig = config_from_args(args)
    return config


def test_in_cluster_flag_reports_tokenreview(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Covers #11.1: with --kube-in-cluster (set by deploy/base) /v1/ca said ['client-cert']
    while the workers ran client-cert and TokenReview (the report read `config.kubeconfig`)."""
    monkeypatch.delenv("BULWARK_KUBE_IN_CLUSTER", raising=False)
    config = serve_config("--data-dir", str(tmp_path), "--kube-in-cluster")
    assert config.kube is not None and config.kubeconfig is None
    assert authenticator_names(config) == ["client-cert", "tokenreview"]
    assert [p.name for p in authenticator_plan(config)] == ["client-cert", "tokenreview"]


@pytest.mark.parametrize(
    ("flags", "names", "reported"),
    [
        ((), ["client-cert", "jwt"], ["client-cert", "jwt (local issuer in {dir})"]),
        (
            ("--jwt-issuer", "https://issuer.example"),
            ["client-cert", "jwt"],
            ["client-cert", "jwt (issuer https://issuer.example)"],
        ),
    ],
)
def test_built_authenticators_are_the_reported_ones(
    tmp_path: Path, flags: tuple[str, ...], names: list[str], reported: list[str]
) -> None:
    config = serve_config("--data-dir", str(tmp_path), *flags)
    LocalIssuer.load_or_create(tmp_path)
    material = create_self_signed(config.trust_domain, datetime.now(UTC))
    built = build_authentication(config, lambda: material)
    assert list(built.names) == names
    assert authenticator_names(config) == [r.format(dir=tmp_path) for r in reported]
