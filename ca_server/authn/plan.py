"""The one list of authenticators a CA runs, derived from its config (docs/COMPATIBILITY.md §1 order).

Workers build their `Authentication` from `authenticator_plan(config)` and the
admin API's `/v1/ca` reports the same plan, so the two cannot drift apart.
Planning needs only the config: no API server, no key file is touched until
`build` is called in a worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from ca_server.authn.authenticators import (
    Authentication,
    Authenticator,
    ClientCertAuthenticator,
    JwksSource,
)
from ca_server.authn.jwt_authenticator import JwtAuthenticator
from ca_server.authn.local_issuer import ISSUER_DIR, JWKS_FILE, LOCAL_ISSUER
from ca_server.authority.material import CaMaterial
from ca_server.config import CaConfig

MaterialSource = Callable[[], CaMaterial]
# Why the embedded issuer's key may be unknown: each data dir has its own issuer key. (No path:
# callers are not told where the CA keeps its files; its start-up log names the data dir.)
LOCAL_ISSUER_HINT = (
    ": this CA trusts the embedded issuer of its own --data-dir, and each data dir has its own "
    "key; a token minted with `bulwark token mint --data-dir` of another data dir is refused. "
    "Mint it with the CA's --data-dir"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedAuthenticator:
    """One entry of the plan: the authenticator's name, what `/v1/ca` says, how to build it."""

    name: str  # the `Authenticator.name` it builds: client-cert, tokenreview, jwt
    description: str
    build: Callable[[MaterialSource], Authenticator]


def authenticator_plan(config: CaConfig) -> tuple[PlannedAuthenticator, ...]:
    """Client certificate, then TokenReview when Kubernetes is configured, then a JWT issuer."""
    plan = [
        PlannedAuthenticator(
            name="client-cert",
            description="client-cert",
            build=lambda material: _client_cert(config, material),
        )
    ]
    if config.kube is not None:
        plan.append(
            PlannedAuthenticator(
                name="tokenreview", description="tokenreview", build=lambda _: _tokenreview(config)
            )
        )
    jwt = _jwt_plan(config)
    if jwt is not None:
        plan.append(jwt)
    return tuple(plan)


def build_authentication(config: CaConfig, material: MaterialSource) -> Authentication:
    """The authenticators of `authenticator_plan(config)`, built for one worker."""
    return Authentication([planned.build(material) for planned in authenticator_plan(config)])


def _client_cert(config: CaConfig, material: MaterialSource) -> Authenticator:
    def trust_anchors() -> tuple[list[x509.Certificate], list[x509.Certificate]]:
        current = material()  # one read: chain and roots from the same material
        return list(current.chain), list(current.roots)

    return ClientCertAuthenticator(trust_domain=config.trust_domain, trust_anchors=trust_anchors)


def _tokenreview(config: CaConfig) -> Authenticator:
    from ca_server.kube import tokenreview_authenticator  # lightkube only when asked for

    return tokenreview_authenticator(config)


def _jwt_plan(config: CaConfig) -> PlannedAuthenticator | None:
    hint = ""
    if config.uses_local_issuer:
        jwks_file = config.data_dir / ISSUER_DIR / JWKS_FILE
        issuer, description = LOCAL_ISSUER, f"jwt (local issuer in {config.data_dir})"
        hint = LOCAL_ISSUER_HINT

        def keys() -> JwksSource:
            return JwksSource(jwks_file=jwks_file)

    elif config.jwks_file is not None or config.jwt_issuer is not None:
        issuer, description = str(config.jwt_issuer), f"jwt (issuer {config.jwt_issuer})"
        static = config.jwks_file

        def keys() -> JwksSource:
            return JwksSource(jwks_file=static, issuer_url=None if static else issuer)

    else:
        return None

    def build(_: MaterialSource) -> Authenticator:
        return JwtAuthenticator(
            keys=keys(),
            issuer=issuer,
            audiences=config.audiences,
            algorithms=config.jwt_algorithms,
            trust_domain=config.trust_domain,
            leeway_s=config.token_clock_skew.total_seconds(),
            max_lifetime_s=config.max_token_lifetime.total_seconds(),
            unknown_key_hint=hint,
        )

    return PlannedAuthenticator(name="jwt", description=description, build=build)
