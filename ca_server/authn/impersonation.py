"""Who may get a certificate for another workload's identity (Istio's `ImpersonatedIdentity`).

One rule for CreateCertificate's `ImpersonatedIdentity` and each item of
`bulwark.v1.CertificateService/BatchCreateCertificates`:

- asking for one's own identity needs no right at all;
- a node account listed in `--node-identity-policy` may act as the `ns/sa` patterns listed
  for it (`ca_server.node_policy`), with or without Kubernetes;
- a node account in `CA_TRUSTED_NODE_ACCOUNTS` may act as a service account that has a pod
  on the caller's own node, when the CA uses Kubernetes (the node binding of
  `Authentication.authorize_impersonation`, as Istio's node authorizer);
- anything else is refused (`ImpersonationRefused`, UNAUTHENTICATED): in particular a trusted
  node account outside Kubernetes with no policy entry for it.

The decision needs no I/O (the node binding reads a watch-backed pod cache), so the event
loop may call it; a pod cache not synced yet answers `UpstreamUnavailable`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from ca_server.errors import ImpersonationRefused
from ca_server.identity import Caller, shown
from ca_server.node_policy import NodeIdentityPolicy
from certs.errors import InvalidSpiffeId
from certs.spiffe_id import SpiffeId, TrustDomain

PARSED_CACHE_ENTRIES = 4096  # distinct requested identities remembered, parsed


class NodeBinding(Protocol):
    """Kubernetes' answer to "has `namespace/account` a pod on the caller's node?"."""

    @property
    def binds_nodes(self) -> bool:
        """Whether the CA can bind callers to nodes at all (it uses Kubernetes)."""

    def authorize_impersonation(self, caller: Caller, namespace: str, account: str) -> None:
        """Return when allowed, else raise `ImpersonationRefused` (or `UpstreamUnavailable`)."""


class ImpersonationRules:
    """Decides, per request, which identity a certificate names."""

    def __init__(
        self,
        *,
        trust_domain: TrustDomain,
        trusted_node_accounts: Iterable[str],
        node_policy: NodeIdentityPolicy | None,
        node_binding: NodeBinding,
    ) -> None:
        self._trust_domain = trust_domain
        self._trusted = frozenset(trusted_node_accounts)
        self._policy = node_policy
        self._binding = node_binding
        self._parsed: dict[str, tuple[SpiffeId, str, str]] = {}

    def identity_for(self, caller: Caller, requested: str, *, field: str) -> Caller:
        """`caller` acting as `requested` (a SPIFFE ID; `field` names where it came from in
        messages), or `ImpersonationRefused` saying why not."""
        if requested == str(caller.spiffe_id):
            return caller
        account = f"{caller.namespace}/{caller.service_account}"
        grant = self._policy.grant_of(account) if self._policy is not None else None
        trusted = account in self._trusted
        if not trusted and grant is None:
            raise ImpersonationRefused(
                f"{caller.spiffe_id} may not request certificates for another identity "
                "(not in CA_TRUSTED_NODE_ACCOUNTS nor in --node-identity-policy)"
            )
        target, namespace, service_account = self._workload_of(requested, field)
        if grant is not None and grant.allows(namespace, service_account):
            pass
        elif trusted and self._binding.binds_nodes:
            self._binding.authorize_impersonation(caller, namespace, service_account)
        elif grant is not None:
            raise ImpersonationRefused(
                f"{caller.spiffe_id} may not impersonate {namespace}/{service_account}: "
                f"--node-identity-policy allows it only {', '.join(grant.patterns) or 'nothing'}"
            )
        else:
            raise ImpersonationRefused(
                f"{caller.spiffe_id} may not impersonate {namespace}/{service_account}: without "
                "Kubernetes a node account needs a --node-identity-policy entry allowing it"
            )
        return caller.acting_as(target, namespace, service_account)

    def _workload_of(self, requested: str, field: str) -> tuple[SpiffeId, str, str]:
        """The workload identity `requested` names, parsed once per distinct text (a node
        agent asks for the same identities at every renewal)."""
        known = self._parsed.get(requested)
        if known is not None:
            return known
        try:
            wanted = SpiffeId.parse(requested)
        except InvalidSpiffeId as exc:
            raise ImpersonationRefused(
                f"{field} {shown(requested)} is not a SPIFFE ID: {exc}"
            ) from exc
        account = wanted.service_account()
        if wanted.trust_domain != self._trust_domain or account is None:
            raise ImpersonationRefused(
                f"{field} {shown(requested)} is not a workload of this trust domain"
            )
        if len(self._parsed) >= PARSED_CACHE_ENTRIES:
            self._parsed.clear()
        parsed = self._parsed[requested] = (wanted, *account)
        return parsed
