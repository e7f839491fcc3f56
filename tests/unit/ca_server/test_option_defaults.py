"""A flag's documented default and the configuration's default are the same value.

For every flag of `bulwark ca serve` (and its Kubernetes flags): the default `--help` shows,
typed back on the command line, must give the configuration a freshly built `CaConfig`
(`KubeSettings`, `LeaseTiming`, `IstiodCertSettings`) has without it; so must the parser's
own default with no flag at all. A default changed in one place only fails here.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import pytest

from ca_server.cli.serve import config_from_args, serve_options
from ca_server.config import CaConfig
from ca_server.kube.settings import (
    KUBE_OPTIONS,
    IstiodCertSettings,
    KubeSettings,
    LeaseTiming,
)
from ca_server.options import CA_OPTIONS, LOG_OPTIONS
from certs.cli import build_parser
from certs.cli.options import Option
from certs.cli.parser import subparsers_of

SHOWN = re.compile(r"\(env (?P<env>[A-Z0-9_]+)(?:; default: (?P<default>.*))?\)$")
KUBE = ("--kube-in-cluster", "--kube-identity", "me")  # identity: else random per parse


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variables every flag falls back to are unset, as on a bare host."""
    for option in (*serve_options(), *LOG_OPTIONS):
        monkeypatch.delenv(option.env, raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def serve_parser() -> argparse.ArgumentParser:
    return subparsers_of(subparsers_of(build_parser())["ca"])["serve"]


def action_of(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings)


def documented(parser: argparse.ArgumentParser, option: Option) -> str | None:
    """The default `--help` shows for `option` (None: it shows none), checked against the
    parser's own default."""
    action = action_of(parser, option.flag)
    shown = SHOWN.search(
        " ".join(str(action.help).split()).replace(f", {option.repeat!r}-separated", "")
    )
    assert shown is not None and shown["env"] == option.env, f"{option.flag}: {action.help}"
    text = shown["default"]
    if text is not None:
        assert action.default == text, f"{option.flag}: parser default {action.default!r}"
    return text


def serve(*flags: str) -> CaConfig:
    config: CaConfig = config_from_args(serve_parser().parse_args(list(flags)))
    return config


def config_defaults() -> dict[str, Any]:
    """CaConfig's own defaults (`data_dir` has none: every caller names it)."""
    built = CaConfig(data_dir=Path(str(CA_OPTIONS["data_dir"].default)))
    return {f.name: getattr(built, f.name) for f in dataclasses.fields(CaConfig)}


def kube_defaults() -> dict[str, Any]:
    built = KubeSettings(kubeconfig=None, identity="me")
    return {f.name: getattr(built, f.name) for f in dataclasses.fields(KubeSettings)}


def as_typed(flag: str, text: str) -> list[str]:
    return [f"{flag}={text}"]


@pytest.mark.parametrize("field", list(CA_OPTIONS))
def test_each_ca_flag_documents_the_configs_default(field: str) -> None:
    option = CA_OPTIONS[field]
    text = documented(serve_parser(), option)
    defaults = config_defaults()
    if text is None:  # no default shown: not given means the configuration's default
        assert getattr(serve(), field) == defaults[field]
        return
    assert getattr(serve(*as_typed(option.flag, text)), field) == defaults[field], text


def test_no_flags_at_all_give_the_default_configuration() -> None:
    assert dataclasses.asdict(serve()) == dataclasses.asdict(CaConfig(**config_defaults()))


def test_workers_default_to_one_per_core() -> None:
    assert "default: one per core" in str(action_of(serve_parser(), "--workers").help)
    assert serve().workers == CaConfig(data_dir=Path("d")).workers == (os.cpu_count() or 1)


@pytest.mark.parametrize("option", KUBE_OPTIONS, ids=lambda o: o.flag)
def test_each_kube_flag_documents_the_settings_default(option: Option) -> None:
    text = documented(serve_parser(), option)
    given = as_typed(option.flag, text) if text else []
    config = serve(*KUBE, *given)
    assert config.kube is not None
    assert dataclasses.asdict(config.kube) == dataclasses.asdict(KubeSettings(**kube_defaults()))
    assert config.kube.lease == LeaseTiming()


def test_istiod_certificate_flags_document_its_defaults() -> None:
    ttl = action_of(serve_parser(), "--istiod-cert-ttl")
    shown = SHOWN.search(" ".join(str(ttl.help).split()))
    assert shown is not None and shown["default"] is not None
    config = serve(*KUBE, "--istiod-cert-secret=istio-system/istiod-tls")
    assert config.kube is not None and config.kube.istiod_cert is not None
    expected = IstiodCertSettings(interval_seconds=config.kube.resync_seconds)
    assert config.kube.istiod_cert == expected
    typed = serve(
        *KUBE,
        "--istiod-cert-secret=istio-system/istiod-tls",
        f"--istiod-cert-ttl={shown['default']}",
    )
    assert typed.kube is not None and typed.kube.istiod_cert == expected


def test_a_drifted_default_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: a table default that no longer matches the dataclass."""
    drifted = dataclasses.replace(CA_OPTIONS["max_ttl"], default="720h")
    monkeypatch.setitem(CA_OPTIONS, "max_ttl", drifted)
    text = documented(serve_parser(), drifted)
    assert text == "720h"
    assert serve(*as_typed(drifted.flag, text)).max_ttl != config_defaults()["max_ttl"]
