"""JWT-SVIDs at the CA: ES256 signing keys that rotate (`keyset`), minting one token and its
record entry (`minter`) and the `bulwark.v1.WorkloadIdentityService` servicer (`service`)."""

from ca_server.spiffe.jwtsvid.keyset import (
    JwtKey,
    JwtKeyPolicy,
    KeyFile,
    KeySet,
    plan,
    signing_key,
)
from ca_server.spiffe.jwtsvid.minter import check_audiences

__all__ = [
    "JwtKey",
    "JwtKeyPolicy",
    "KeyFile",
    "KeySet",
    "check_audiences",
    "plan",
    "signing_key",
]
