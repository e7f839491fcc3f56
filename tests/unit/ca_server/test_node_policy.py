"""`--node-identity-policy FILE`: the parser's verdict on every kind of bad line, and the
impersonation rule it feeds (in-process; the CLI's exit 2 is in
tests/integration/ca/test_node_identity_policy.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ca_server.authn.impersonation import ImpersonationRules
from ca_server.errors import ConfigError, ImpersonationRefused
from ca_server.identity import Caller
from ca_server.node_policy import load_node_policy, parse_node_policy
from certs.spiffe_id import SpiffeId, TrustDomain

TD = TrustDomain("cluster.local")

GOOD = """\
# node agents and what each may act as
bulwark-system/node-agent:
  - demo/*
  - shop/checkout
  - "team-?/api.v*"
vm-agents/agent: []
"""


def test_a_good_policy_parses_and_matches_per_part() -> None:
    policy = parse_node_policy(GOOD)
    assert [g.account for g in policy.grants] == ["bulwark-system/node-agent", "vm-agents/agent"]
    node = "bulwark-system/node-agent"
    assert policy.allows(node, "demo", "frontend")
    assert policy.allows(node, "shop", "checkout")
    assert policy.allows(node, "team-a", "api.v2")
    assert not policy.allows(node, "team-ab", "api.v2")  # '?' is one character
    assert not policy.allows(node, "shop", "payments")
    assert not policy.allows(node, "demo-x", "frontend")  # '*' stays within its part
    assert not policy.allows("vm-agents/agent", "demo", "frontend")
    assert not policy.allows("other/agent", "demo", "frontend")


def test_the_flow_style_of_the_issue_parses() -> None:
    policy = parse_node_policy('{"bulwark-system/node-agent": ["demo/*"]}')
    assert policy.allows("bulwark-system/node-agent", "demo", "x")


BAD = [
    ("empty", "", "names no node account"),
    ("empty mapping", "{}", "names no node account"),
    ("a list at the top", "- demo/*\n", "line 1: expected a mapping"),
    ("not YAML", "a: [b\n", "line 2"),
    ("account without a slash", "node-agent: [demo/*]\n", "line 1: node account 'node-agent'"),
    ("account with two slashes", "a/b/c: [demo/*]\n", "is not NS/SA"),
    ("account uppercase", "Sys/agent: [demo/*]\n", "not a Kubernetes namespace name"),
    ("patterns not a list", "sys/agent: demo/*\n", "line 1: expected a list"),
    ("no value", "sys/agent:\n", "expected a list"),
    ("pattern without a slash", "sys/agent:\n  - demo\n", "line 2: pattern 'demo' is not NS/SA"),
    ("pattern with brackets", "sys/agent: ['demo/[ab]']\n", "bad service-account part"),
    ("pattern uppercase", "sys/agent: ['Demo/*']\n", "bad namespace part"),
    ("pattern a number", "sys/agent: [42]\n", "a pattern must be a string"),
    ("pattern a mapping", "sys/agent: [{a: b}]\n", "a pattern must be a string"),
    ("account twice", "sys/agent: [a/b]\nsys/agent: [c/d]\n", "line 2: node account sys/agent"),
]


@pytest.mark.parametrize(("text", "says"), [(t, s) for _, t, s in BAD], ids=[n for n, _, _ in BAD])
def test_a_bad_policy_is_a_config_error_naming_the_line(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_node_policy(text, source="p.yaml")
    assert says in str(err.value) and "--node-identity-policy p.yaml" in str(err.value)


def test_every_bad_line_is_reported_at_once() -> None:
    text = "sys/agent:\n  - demo\n  - ok/*\n  - Bad/x\nnot-an-account: [a/b]\n"
    with pytest.raises(ConfigError) as err:
        parse_node_policy(text)
    message = str(err.value)
    assert "line 2:" in message and "line 4:" in message and "line 5:" in message
    assert "line 3:" not in message


def test_an_unreadable_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_node_policy(tmp_path / "missing.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_node_policy(binary)


class _NoKubernetes:
    binds_nodes = False

    def authorize_impersonation(self, caller: Caller, namespace: str, account: str) -> None:
        raise AssertionError("the node binding is never asked without Kubernetes")


def caller(ns: str, sa: str) -> Caller:
    return Caller(
        spiffe_id=SpiffeId.for_service_account(TD, ns, sa),
        namespace=ns,
        service_account=sa,
        authenticator="jwt",
        subject=f"system:serviceaccount:{ns}:{sa}",
    )


def rules(policy: str | None, trusted: tuple[str, ...] = ()) -> ImpersonationRules:
    return ImpersonationRules(
        trust_domain=TD,
        trusted_node_accounts=trusted,
        node_policy=parse_node_policy(policy) if policy else None,
        node_binding=_NoKubernetes(),
    )


def target(ns: str, sa: str) -> str:
    return str(SpiffeId.for_service_account(TD, ns, sa))


def test_the_policy_alone_grants_without_being_trusted_for_kubernetes() -> None:
    node = caller("bulwark-system", "node-agent")
    got = rules('{"bulwark-system/node-agent": ["demo/*"]}').identity_for(
        node, target("demo", "web"), field="spiffe_id"
    )
    assert str(got.spiffe_id) == target("demo", "web") and got.namespace == "demo"
    assert got.subject.endswith(f"as {target('demo', 'web')}")


@pytest.mark.parametrize(
    ("policy", "trusted", "says"),
    [
        (None, (), "not in CA_TRUSTED_NODE_ACCOUNTS nor in --node-identity-policy"),
        (None, ("bulwark-system/node-agent",), "needs a --node-identity-policy entry"),
        ('{"other/agent": ["demo/*"]}', (), "not in CA_TRUSTED_NODE_ACCOUNTS"),
        ('{"bulwark-system/node-agent": ["shop/*"]}', (), "allows it only shop/*"),
        ('{"bulwark-system/node-agent": []}', (), "allows it only nothing"),
    ],
)
def test_impersonation_outside_the_policy_is_refused(
    policy: str | None, trusted: tuple[str, ...], says: str
) -> None:
    node = caller("bulwark-system", "node-agent")
    with pytest.raises(ImpersonationRefused, match=says.replace("*", r"\*")):
        rules(policy, trusted).identity_for(node, target("demo", "web"), field="spiffe_id")


def test_ones_own_identity_needs_no_policy() -> None:
    me = caller("demo", "web")
    assert rules(None).identity_for(me, target("demo", "web"), field="spiffe_id") is me


def test_a_policy_is_read_from_its_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    policy = load_node_policy(path)
    assert policy.source == str(path) and len(policy.grants) == 2


def test_acting_as_keeps_everything_of_the_caller_but_the_identity() -> None:
    """`Caller.acting_as` builds the impersonated caller field by field (cheaper than
    `dataclasses.replace`): a field added to Caller must be carried over too."""
    import dataclasses

    node = dataclasses.replace(
        caller("bulwark-system", "node-agent"),
        pod_name="p",
        pod_uid="u",
        node_name="n",
        cluster_id="c",
        peer="ipv4:1.2.3.4:5",
        expires_at=123.0,
    )
    target = SpiffeId.for_service_account(TD, "demo", "web")
    acting = node.acting_as(target, "demo", "web")
    changed = {"spiffe_id", "namespace", "service_account", "subject"}
    for field in dataclasses.fields(node):
        if field.name not in changed:
            assert getattr(acting, field.name) == getattr(node, field.name), field.name
    assert acting.subject == f"{node.subject} as {target}"
    assert (acting.spiffe_id, acting.namespace, acting.service_account) == (target, "demo", "web")
