"""A node agent's status port: the identities it serves, the holders behind each, expiries.

`/debug/identities` (also at `/debug/certs`) lists every identity with its pods (or
processes), serial and time left, never a key, and the call the CA is asked with
(`BatchCreateCertificates`, or `CreateCertificate` for a CA without it); `/healthz/ready` says 200 once the node socket
is served (and, with the k8s attestor, the pods of the node have been listed once);
`/metrics` is the agent's. `bulwark agent status --node` reads `/debug/identities`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from agent.endpoints.status import StatusServer, describe_cert

if TYPE_CHECKING:
    from agent.metrics import AgentMetrics
    from agent.node.front import NodeFront
    from agent.node.own import OwnIdentity
    from agent.node.registry import IdentityRegistry
    from agent.state.cache import SecretCache

IDENTITIES_PATH = "/debug/identities"


class NodeStatusServer(StatusServer):
    """The per-pod status server's routes, answered for many identities."""

    def __init__(
        self,
        *,
        shared: SecretCache,
        registry: IdentityRegistry,
        front: NodeFront,
        metrics: AgentMetrics,
        now: Callable[[], datetime],
        not_ready: Callable[[], str],
        attestor: str,
        own: OwnIdentity,
        ca_call: Callable[[], str],
    ) -> None:
        super().__init__(cache=shared, metrics=metrics, now=now)
        self._shared = shared
        self._registry = registry
        self._front = front
        self._not_ready = not_ready
        self._attestor = attestor
        self._own = own
        self._ca_call = ca_call

    def document(self) -> dict[str, Any]:
        now = self._now()
        roots = self._shared.snapshot.roots
        return {
            "mode": "node",
            "attestor": self._attestor,
            "socket": str(self._front.owner.path),
            "connections": self._front.connection_count,
            "identities": self._registry.describe(now),
            "own": self._own_document(now),
            "ca_call": self._ca_call(),
            "roots": [describe_cert(c, now) for c in roots.certs] if roots else [],
        }

    def _own_document(self, now: datetime) -> dict[str, Any]:
        """How the node agent authenticates to the CA now, and its own certificate if any."""
        svid = self._own.cache.snapshot.svid
        credential = self._own.credential()
        return {
            "authenticates_with": "certificate" if credential is not None else "token",
            "serial": svid.serial if svid else None,
            "seconds_left": int((svid.not_after - now).total_seconds()) if svid else None,
            "error": self._own.cache.snapshot.svid_error or None,
        }

    def route(self, method: str, path: str) -> tuple[int, str, bytes]:
        bare = path.split("?", 1)[0]
        if method == "GET" and bare == "/healthz/ready":
            reason = self._not_ready()
            if not reason:
                return 200, "text/plain", b"ready\n"
            return 503, "text/plain", f"not ready: {reason}\n".encode()
        if method == "GET" and bare in (IDENTITIES_PATH, "/debug/certs"):
            return 200, "application/json", json.dumps(self.document(), indent=2).encode()
        return super().route(method, path)
