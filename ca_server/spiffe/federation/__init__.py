"""Federation on the CA side: the configured foreign trust domains (`peers`), their bundles
kept in the data dir (`store`) and fetched from their bundle endpoints (`fetcher`)."""

from ca_server.spiffe.federation.fetcher import Federator, FetchFailed, fetch_bundle
from ca_server.spiffe.federation.peers import FederationPeer, bundle_endpoint_id, parse_peers
from ca_server.spiffe.federation.store import BadBundle, FederationStore, parse_bundle

__all__ = [
    "BadBundle",
    "FederationPeer",
    "FederationStore",
    "Federator",
    "FetchFailed",
    "bundle_endpoint_id",
    "fetch_bundle",
    "parse_bundle",
    "parse_peers",
]
