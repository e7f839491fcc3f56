"""The SDS `ROOTCA` in-process: the plain `trusted_ca` while only the own trust domain is held
(its version as before federation existed), Envoy's SPIFFE validator with one trust bundle per
domain once a federated domain appears, and back when it goes."""

from __future__ import annotations

import base64

from cryptography import x509

from agent.endpoints.resources import ROOTCA, secret_for, version_of
from agent.state.cache import SecretCache
from agent.state.svid import RootBundle
from agent.state.trust_bundles import intake
from certs.spiffe_id import TrustDomain
from tests.support.bundle_server import bundle, jwt_jwk, root_jwk
from tests.support.rootca import rootca_domains

OWN = TrustDomain("cluster.local")
OWN_ROOT, PEER_ROOT = root_jwk("cluster.local"), root_jwk("peer.test")


def der(jwk: dict[str, str | list[str]]) -> bytes:
    return base64.b64decode(jwk["x5c"][0])


def test_rootca_form_follows_the_trust_domains_held() -> None:
    cache = SecretCache()
    own_cert = x509.load_der_x509_certificate(der(OWN_ROOT))
    cache.set_file_roots(RootBundle.of([own_cert]))
    alone = cache.snapshot
    assert rootca_domains(secret_for(alone, ROOTCA)) == {"": {der(OWN_ROOT)}}
    assert version_of(alone, ROOTCA) == RootBundle.of([own_cert]).version

    own_doc = bundle([OWN_ROOT, jwt_jwk("k")], sequence=1)
    peer_doc = bundle([PEER_ROOT], sequence=1)
    both, _ = intake(OWN, {"cluster.local": own_doc, "peer.test": peer_doc})
    cache.set_trust_bundles(both)
    federated = cache.snapshot
    assert rootca_domains(secret_for(federated, ROOTCA)) == {
        "cluster.local": {der(OWN_ROOT)},
        "peer.test": {der(PEER_ROOT)},
    }
    assert version_of(federated, ROOTCA) != version_of(alone, ROOTCA)  # pushed to Envoy

    only_own, _ = intake(OWN, {"cluster.local": own_doc})
    cache.set_trust_bundles(only_own)
    assert rootca_domains(secret_for(cache.snapshot, ROOTCA)) == {"": {der(OWN_ROOT)}}
    assert version_of(cache.snapshot, ROOTCA) == version_of(alone, ROOTCA)
