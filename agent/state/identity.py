"""One SPIFFE ID's state, and how a servicer finds the state a call is answered from.

`IdentityState` is what the SDS and Workload API servicers answer from: the
identity, its secret cache (SVID, roots, bundles, file resources) and its
JWT-SVIDs. The servicers hold no state of their own: each call asks a
`StateLookup` (a function of the call's gRPC context) for its state once, at
its start. The per-pod agent has one identity and answers every call from it
(`single`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeAlias

    import grpc

    from agent.state.cache import SecretCache
    from agent.state.jwt_cache import JwtSvidCache
    from certs.spiffe_id import SpiffeId

    StateLookup: TypeAlias = Callable[[grpc.aio.ServicerContext[Any, Any]], "IdentityState"]


class IdentityState(
    NamedTuple
):  # a named tuple: an agent process pays less for it than for a dataclass
    """Everything a call about one SPIFFE ID is answered from."""

    spiffe_id: SpiffeId  # the identity the agent asks the CA for
    cache: SecretCache
    jwt_svids: JwtSvidCache


def single(state: IdentityState) -> StateLookup:
    """Every call is answered from `state`: the per-pod agent, which holds one identity."""

    def lookup(context: grpc.aio.ServicerContext[Any, Any]) -> IdentityState:
        return state

    return lookup
