"""Federation on the CA side: the configured foreign trust domains (`peers`), their bundles
kept in the data dir (`store`) and fetched from their bundle endpoints (`fetcher`, over
`ca_server.http_get` under one deadline). The bundle format is `certs.spiffe_bundle`'s."""

from ca_server.spiffe.federation.fetcher import (
    FEDERATION_REFUSALS,
    Federator,
    FetchFailed,
    fetch_bundle,
)
from ca_server.spiffe.federation.peers import FederationPeer, bundle_endpoint_id, parse_peers
from ca_server.spiffe.federation.store import FederationStore, foreign_bundle

__all__ = [
    "FEDERATION_REFUSALS",
    "FederationPeer",
    "FederationStore",
    "Federator",
    "FetchFailed",
    "bundle_endpoint_id",
    "fetch_bundle",
    "foreign_bundle",
    "parse_peers",
]
