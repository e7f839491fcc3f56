"""What an attestor says about a caller, and what every attestor offers the node runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from agent.node.peer import PeerProcess
    from certs.spiffe_id import SpiffeId


class Attestation(NamedTuple):
    """A caller's identity and what it rests on."""

    spiffe_id: SpiffeId
    # What holds the identity on this node: a pod (`pod:<uid>`) or a process (`process:<key>`).
    # The identity's state is freed when its last holder leaves.
    holder: str
    holder_name: str  # for the status page and logs: the pod's ns/name, or pid, uid and path
    # The facts that must stay the same for later calls on the same connection.
    facts: tuple[str, ...]


class Attestor(Protocol):
    """Turns a connected process into an identity, or refuses it (`NotAttested`, saying what
    was found)."""

    name: str
    # True when a holder is a process (it leaves when the process exits); False when holders
    # come and go with something else (pods, from the pod watch).
    holders_are_processes: bool

    async def start(self) -> None:
        """Before the socket is served (the k8s attestor lists the node's pods)."""
        ...

    async def run(self) -> None:
        """While the agent runs (the k8s attestor keeps watching the node's pods)."""
        ...

    def not_ready(self) -> str:
        """Why the agent cannot attest yet; empty when it can."""
        ...

    async def close(self) -> None: ...

    async def attest(self, peer: PeerProcess) -> Attestation: ...

    def recheck(self, peer: PeerProcess, attestation: Attestation) -> None:
        """Raise `CallerChanged` or `CallerGone` if `peer` no longer attests to `attestation`
        (quick, on the event loop: it runs at each call and in the periodic sweep)."""
        ...
