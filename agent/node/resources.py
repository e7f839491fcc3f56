"""The SDS names a node agent serves a caller: its own, never another workload's.

`default` (the caller's chain and key) and `ROOTCA` (the bundle), as Istio asks for them, and
the same two under SPIRE's names for them: the caller's own SPIFFE ID and its trust domain's
ID (`spiffe://cluster.local`). Another workload's SPIFFE ID is refused, and so are the
`file-cert:`/`file-root:` resources: a node agent reads the node's files with its own rights,
so serving them would hand any caller any file of the node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.endpoints.resources import DEFAULT, ROOTCA, secret_for, version_of
from agent.errors import UnknownResource
from agent.files.secrets import FILE_CERT_PREFIX, FILE_ROOT_PREFIX
from agent.logs import printable
from agent.node.errors import NotEntitledResource

if TYPE_CHECKING:
    from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

    from agent.state.cache import Snapshot
    from agent.state.identity import IdentityState
    from certs.spiffe_id import SpiffeId


class NodeResourceNames:
    """One caller's names: `default`, `ROOTCA`, its SPIFFE ID and its trust domain's ID."""

    __slots__ = ("_aliases", "_own")

    def __init__(self, own: SpiffeId) -> None:
        self._own = own
        self._aliases = {
            DEFAULT: DEFAULT,
            ROOTCA: ROOTCA,
            str(own): DEFAULT,
            own.trust_domain.id: ROOTCA,
        }

    def _served(self, name: str) -> str:
        served = self._aliases.get(name)
        if served is not None:
            return served
        shown = printable(name)
        if name.startswith((FILE_CERT_PREFIX, FILE_ROOT_PREFIX)):
            raise NotEntitledResource(
                f"resource {shown!r}: a node agent serves no file resources (it would read the "
                "node's files for any caller)"
            )
        if name.startswith("spiffe://"):
            raise NotEntitledResource(
                f"resource {shown!r} belongs to another workload; this caller is {self._own}"
            )
        raise UnknownResource(
            f"unknown resource name {shown!r}: this caller is served {DEFAULT!r}, {ROOTCA!r}, "
            f"{str(self._own)!r} and {self._own.trust_domain.id!r}"
        )

    def check(self, name: str) -> bool:
        self._served(name)
        return False  # never a file resource

    def version(self, snapshot: Snapshot, name: str) -> str | None:
        return version_of(snapshot, self._served(name))

    def secret(self, snapshot: Snapshot, name: str) -> secret_pb2.Secret | None:
        secret = secret_for(snapshot, self._served(name))
        if secret is not None:
            secret.name = name  # Envoy matches the answer by the name it asked for
        return secret


def node_names(state: IdentityState) -> NodeResourceNames:
    return NodeResourceNames(state.spiffe_id)
