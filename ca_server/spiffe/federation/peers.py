"""Configured foreign trust domains: `--federate-with TD=URL[,profile=..][,bundle=FILE][,endpoint-spiffe-id=ID]`."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from ca_server.errors import ConfigError
from ca_server.options import BUNDLE_ENDPOINT_PROFILES, BundleProfile
from certs.errors import InvalidSpiffeId
from certs.spiffe_id import SpiffeId, TrustDomain

Profile = BundleProfile
PROFILES = BUNDLE_ENDPOINT_PROFILES
BUNDLE_ENDPOINT_PATH = "bulwark/bundle-endpoint"  # a Bulwark endpoint's SVID path


def bundle_endpoint_id(trust_domain: TrustDomain) -> SpiffeId:
    """The SPIFFE ID a Bulwark CA's https_spiffe bundle endpoint presents."""
    return SpiffeId.parse(f"spiffe://{trust_domain}/{BUNDLE_ENDPOINT_PATH}")


@dataclass(frozen=True, slots=True, kw_only=True)
class FederationPeer:
    """One foreign trust domain and where its bundle is fetched."""

    trust_domain: TrustDomain
    url: str
    profile: Profile = "https_spiffe"
    bundle_file: Path | None = None  # initial bundle (required for https_spiffe)
    endpoint_spiffe_id: SpiffeId | None = None  # https_spiffe: the endpoint's SVID

    @property
    def expected_endpoint_id(self) -> SpiffeId:
        return self.endpoint_spiffe_id or bundle_endpoint_id(self.trust_domain)


def _option(peer: str, key: str, value: str) -> tuple[str, object]:
    if key == "profile":
        if value not in PROFILES:
            raise ConfigError(
                f"--federate-with {peer}: profile must be one of {', '.join(PROFILES)}"
            )
        return "profile", value
    if key == "bundle":
        return "bundle_file", Path(value)
    if key == "endpoint-spiffe-id":
        try:
            return "endpoint_spiffe_id", SpiffeId.parse(value)
        except InvalidSpiffeId as exc:
            raise ConfigError(f"--federate-with {peer}: endpoint-spiffe-id: {exc}") from None
    raise ConfigError(
        f"--federate-with {peer}: unknown option {key!r} "
        "(profile=, bundle=, endpoint-spiffe-id= are known)"
    )


def parse_peer(text: str, *, own: TrustDomain) -> FederationPeer:
    """One `--federate-with` value, or a `ConfigError` naming what is wrong."""
    head, *options = text.split(",")
    name, sep, url = head.partition("=")
    if not sep or not name.strip() or not url.strip():
        raise ConfigError(f"--federate-with {text!r}: expected TRUST_DOMAIN=URL[,option=value...]")
    try:
        td = TrustDomain(name.strip())
    except (InvalidSpiffeId, ValueError) as exc:
        raise ConfigError(f"--federate-with: {name!r} is not a trust domain: {exc}") from None
    if td == own:
        raise ConfigError(f"--federate-with {td}: that is this CA's own trust domain")
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme != "https" or not parsed.hostname:
        raise ConfigError(f"--federate-with {td}: the bundle endpoint URL must be https://HOST...")
    fields: dict[str, object] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not value.strip():
            raise ConfigError(f"--federate-with {td}: option {option!r} must be key=value")
        k, v = _option(str(td), key.strip(), value.strip())
        fields[k] = v
    peer = FederationPeer(trust_domain=td, url=url.strip(), **fields)  # type: ignore[arg-type]
    if peer.profile == "https_spiffe" and peer.bundle_file is None:
        raise ConfigError(
            f"--federate-with {td}: the https_spiffe profile needs bundle=FILE, the trust "
            "domain's initial bundle, to authenticate its endpoint"
        )
    return peer


def parse_peers(values: tuple[str, ...], *, own: TrustDomain) -> tuple[FederationPeer, ...]:
    peers = tuple(parse_peer(v, own=own) for v in values)
    names = [str(p.trust_domain) for p in peers]
    if len(set(names)) != len(names):
        raise ConfigError("--federate-with names a trust domain more than once")
    return peers
