"""The SDS names a node agent serves one caller: its own under Istio's and SPIRE's names, never
another workload's, never a file of the node."""

from __future__ import annotations

import pytest

from agent.errors import UnknownResource
from agent.node.errors import NotEntitledResource
from agent.node.resources import NodeResourceNames
from agent.state.cache import SecretCache
from certs.spiffe_id import SpiffeId
from tests.support.agent import make_svid

OWN = SpiffeId.parse("spiffe://cluster.local/ns/demo/sa/frontend")


def test_own_names_are_served_under_the_name_asked_for() -> None:
    cache = SecretCache()
    svid = make_svid()
    cache.set_svid(svid)
    names = NodeResourceNames(OWN)
    snapshot = cache.snapshot
    for name, kind in (
        ("default", "tls_certificate"),
        (str(OWN), "tls_certificate"),
        ("ROOTCA", "validation_context"),
        ("spiffe://cluster.local", "validation_context"),
    ):
        assert names.check(name) is False
        secret = names.secret(snapshot, name)
        assert secret is not None and secret.name == name and secret.HasField(kind)
        assert names.version(snapshot, name)


@pytest.mark.parametrize(
    ("name", "error", "words"),
    [
        ("spiffe://cluster.local/ns/demo/sa/backend", NotEntitledResource, "another workload"),
        ("spiffe://other.domain/ns/demo/sa/frontend", NotEntitledResource, "another workload"),
        ("file-root:/etc/kubernetes/pki/ca.crt", NotEntitledResource, "no file resources"),
        ("file-cert:/etc/a.pem~/etc/a.key", NotEntitledResource, "no file resources"),
        ("spiffe://other.domain", NotEntitledResource, "another workload"),
        ("something", UnknownResource, "unknown resource name"),
    ],
)
def test_other_names_are_refused(name: str, error: type[Exception], words: str) -> None:
    with pytest.raises(error) as refused:
        NodeResourceNames(OWN).check(name)
    assert words in str(refused.value)
