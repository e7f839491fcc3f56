"""Two CA processes of different trust domains federate over their https_spiffe bundle
endpoints: each fetches the other's bundle, serves it (FetchTrustBundles, admin API), keeps
it across a restart and keeps the last one when a fetch fails. Plus the flag's grammar."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ca_server.errors import ConfigError
from ca_server.spiffe.federation import parse_peers
from certs.spiffe_id import TrustDomain
from protos.bulwark.v1 import identity_pb2, identity_pb2_grpc
from tests.support.ca_client import channel
from tests.support.ca_process import RunningCa, serve_once
from tests.support.ports import free_port

FAST = ("--jwt-key-active-life", "8s", "--workers", "1")  # refresh hint 2 s


def start(data: Path, td: str, port: int, *federate: str) -> RunningCa:
    args = ["--trust-domain", td, "--bundle-endpoint-addr", f"127.0.0.1:{port}", *FAST]
    for value in federate:
        args += ["--federate-with", value]
    return RunningCa(data_dir=data, args=tuple(args), env={}).start()


def admin(ca: RunningCa, path: str) -> Any:
    return json.loads(urllib.request.urlopen(f"{ca.admin_url}{path}", timeout=10).read())


def grpc_bundles(ca: RunningCa) -> dict[str, dict[str, Any]]:
    token = ca.mint_token("demo", "frontend")
    stub = identity_pb2_grpc.WorkloadIdentityServiceStub(channel(ca.grpc_addr, ca.root_cert_path))
    response = stub.FetchTrustBundles(
        identity_pb2.FetchTrustBundlesRequest(),
        metadata=[("authorization", f"Bearer {token}")],
        timeout=10,
    )
    return {td: json.loads(doc) for td, doc in response.bundles.items()}


def x509_only(doc: dict[str, Any]) -> dict[str, Any]:
    """An initial bundle without JWT keys: a fetched one is told apart by having them."""
    return {**doc, "keys": [k for k in doc["keys"] if k["use"] == "x509-svid"]}


def jwt_kids(doc: dict[str, Any]) -> set[str]:
    return {k["kid"] for k in doc["keys"] if k["use"] == "jwt-svid"}


def eventually(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.3)


@pytest.mark.slow
def test_two_trust_domains_federate_over_https_spiffe(tmp_path: Path) -> None:
    port_a, port_b = free_port(), free_port()
    a = start(tmp_path / "a", "a.test", port_a)
    b: RunningCa | None = None
    try:
        a_initial = tmp_path / "a-bundle.json"
        a_initial.write_text(json.dumps(x509_only(admin(a, "/v1/trust-bundle?format=spiffe"))))
        b = start(
            tmp_path / "b",
            "b.test",
            port_b,
            f"a.test=https://127.0.0.1:{port_a}/,bundle={a_initial}",
        )
        b_initial = tmp_path / "b-bundle.json"
        b_initial.write_text(json.dumps(x509_only(admin(b, "/v1/trust-bundle?format=spiffe"))))
        a.stop()
        a = start(
            tmp_path / "a",
            "a.test",
            port_a,
            f"b.test=https://127.0.0.1:{port_b}/,bundle={b_initial}",
        )

        def fetched(ca: RunningCa, other: RunningCa, td: str) -> bool:
            """`ca` serves a bundle of `td` holding `other`'s current JWT keys (the initial
            file had none, so it was fetched from the endpoint)."""
            seen = grpc_bundles(ca).get(td)
            current = jwt_kids(admin(other, "/v1/trust-bundle?format=spiffe"))
            return seen is not None and bool(jwt_kids(seen) & current)

        eventually(lambda: fetched(b, a, "a.test"), "b.test fetched a.test's bundle")
        eventually(lambda: fetched(a, b, "b.test"), "a.test fetched b.test's bundle")
        own = grpc_bundles(a)
        assert set(own) == {"a.test", "b.test"}
        assert admin(a, "/v1/federated-bundles")["b.test"]["keys"]
        # a.test goes away: b.test keeps its last bundle of a.test, counts and logs the failure.
        kept = grpc_bundles(b)["a.test"]
        a.stop()
        eventually(
            lambda: _metric(b, "bulwark_federation_fetch_failures_total", "a.test") > 0,
            "b.test counted a failed fetch",
        )
        assert grpc_bundles(b)["a.test"] == kept
        assert "bundle of a.test not refreshed (keeping the last one)" in b.log()
        # A restart keeps it too (the initial file has no JWT keys; the kept bundle has).
        b.stop()
        b.start()
        assert grpc_bundles(b)["a.test"] == kept
        assert jwt_kids(kept)
    finally:
        a.stop()
        if b is not None:
            b.stop()


def _metric(ca: RunningCa, name: str, td: str) -> float:
    text = urllib.request.urlopen(f"{ca.admin_url}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(f'{name}{{trust_domain="{td}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


OWN = TrustDomain("cluster.local")
BAD_FLAGS = [
    ("no-url", "other.test", "TRUST_DOMAIN=URL"),
    ("own-domain", "cluster.local=https://x/", "own trust domain"),
    ("http", "other.test=http://x/,profile=https_web", "https://"),
    ("no-initial-bundle", "other.test=https://x/", "needs bundle=FILE"),
    ("unknown-option", "other.test=https://x/,colour=blue", "unknown option"),
    ("bad-profile", "other.test=https://x/,profile=ftp", "profile must be one of"),
    ("bad-endpoint-id", "other.test=https://x/,bundle=f,endpoint-spiffe-id=nope", "endpoint-spiffe-id"),
    ("bad-domain", "Not A Domain=https://x/,profile=https_web", "not a trust domain"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "flag", "words"), BAD_FLAGS, ids=[b[0] for b in BAD_FLAGS])
def test_bad_federate_with_is_a_config_error(name: str, flag: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_peers((flag,), own=OWN)
    assert words in str(err.value)


def test_federate_with_parses_options_and_refuses_duplicates() -> None:
    (peer,) = parse_peers(
        ("other.test=https://h:8443/b,bundle=/x.json,endpoint-spiffe-id=spiffe://other.test/ep",),
        own=OWN,
    )
    assert (
        peer.profile == "https_spiffe"
        and str(peer.expected_endpoint_id) == "spiffe://other.test/ep"
    )
    (web,) = parse_peers(("web.test=https://h/,profile=https_web",), own=OWN)
    assert str(web.expected_endpoint_id) == "spiffe://web.test/bulwark/bundle-endpoint"
    with pytest.raises(ConfigError, match="more than once"):
        parse_peers(("w.test=https://h/,profile=https_web",) * 2, own=OWN)


SERVE_ERRORS = [
    ("federate-flag", ("--federate-with", "other.test"), {}, "TRUST_DOMAIN=URL"),
    ("federate-env", (), {"BULWARK_FEDERATE_WITH": "x.test=https://h/;x.test=https://h/"}, "needs bundle=FILE"),
    ("initial-bundle-missing", ("--federate-with", "o.test=https://h/,bundle=/nonexistent.json"), {}, "/nonexistent.json"),
    ("jwt-ttl-over-max", ("--jwt-svid-ttl", "2h"), {}, "at most --jwt-svid-max-ttl"),
    ("key-life-zero", ("--jwt-key-active-life", "0s"), {}, "--jwt-key-active-life"),
    ("jwt-ttl-garbage", ("--jwt-svid-ttl", "soon"), {}, "--jwt-svid-ttl"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "args", "env", "words"), SERVE_ERRORS, ids=[e[0] for e in SERVE_ERRORS]
)
def test_bad_jwt_and_federation_settings_are_one_line_start_up_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    args: tuple[str, ...],
    env: dict[str, str],
    words: str,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    done = serve_once(tmp_path / "data", *args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert words in done.stderr.strip().splitlines()[-1], done.stderr
