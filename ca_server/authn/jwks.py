"""Signing keys of one token issuer: a static JWKS file, or an OIDC issuer's published keys.

Remote keys are fetched and cached by PyJWT's own `PyJWKClient` (its JWK-set cache, a
cooldown between forced refreshes, an http(s)-only URI); this module adds OIDC discovery
(one GET of `/.well-known/openid-configuration`, kept) and maps every fetch failure to
`UpstreamUnavailable`. An unknown `kid` refreshes at most once per `REFRESH_COOLDOWN_S`,
so a flood of made-up key ids costs the issuer one request per cooldown, not one per token.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import jwt

from ca_server.errors import AuthenticationError, UpstreamUnavailable
from ca_server.identity import shown

log = logging.getLogger(__name__)

REFRESH_COOLDOWN_S = 10.0
JWKS_CACHE_LIFESPAN_S = 300.0


class UnknownKeyId(AuthenticationError):
    """A token's `kid` names no key of the issuer (the authenticator adds whose)."""


class JwksSource:
    """The issuer's keys by `kid`; `key_for(None)` gives every key (tokens without a `kid`)."""

    def __init__(
        self,
        *,
        jwks_file: Path | None = None,
        issuer_url: str | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        if jwks_file is None and issuer_url is None:
            raise ValueError("JwksSource needs a JWKS file or an issuer URL")
        self._file = jwks_file
        self._issuer_url = issuer_url
        self._timeout = timeout_s
        self._lock = threading.Lock()
        self._client: jwt.PyJWKClient | None = None
        self._file_keys: list[jwt.PyJWK] = []
        self._file_read_at = float("-inf")

    @property
    def remote(self) -> bool:
        """Whether a refresh reads the network (discovery) rather than a local file."""
        return self._file is None

    def key_for(self, kid: str | None) -> list[jwt.PyJWK]:
        """The keys a token with this `kid` may be signed with; AuthenticationError if none."""
        keys = self._remote_keys(kid) if self._file is None else self._local_keys(kid)
        if kid is None:
            return keys
        found = [k for k in keys if k.key_id == kid]
        if not found:
            raise UnknownKeyId(f"token key id {shown(kid)} is not among the issuer's signing keys")
        return found

    def _local_keys(self, kid: str | None) -> list[jwt.PyJWK]:
        with self._lock:
            known = {k.key_id for k in self._file_keys}
            stale = not self._file_keys or (kid is not None and kid not in known)
            if stale and time.monotonic() - self._file_read_at >= REFRESH_COOLDOWN_S:
                self._file_read_at = time.monotonic()
                self._file_keys = list(_keyset(self._read_file()).keys)
            return list(self._file_keys)

    def _read_file(self) -> dict[str, Any]:
        assert self._file is not None
        try:
            data = json.loads(self._file.read_text())
        except (OSError, ValueError) as exc:
            log.warning("cannot load the JWKS file %s: %s", self._file, exc)
            raise UpstreamUnavailable(
                "the token issuer's signing keys cannot be loaded; retry later"
            ) from exc
        if not isinstance(data, dict):
            raise UpstreamUnavailable("the issuer's JWKS is not a JSON object")
        return data

    def _remote_keys(self, kid: str | None) -> list[jwt.PyJWK]:
        client = self._jwk_client()
        try:
            keys = client.get_signing_keys()
            if kid is not None and kid not in {k.key_id for k in keys}:
                try:
                    return [client.get_signing_key(kid)]
                except jwt.PyJWKClientConnectionError:
                    raise
                except jwt.PyJWKClientError:
                    return keys  # still unknown after a permitted refresh: the caller says so
            return keys
        except jwt.PyJWKClientConnectionError as exc:
            log.warning("cannot fetch the issuer's JWKS: %s", exc)
            raise UpstreamUnavailable(
                "the token issuer's signing keys cannot be loaded; retry later"
            ) from exc
        except jwt.PyJWTError as exc:  # an empty or unusable key set
            raise UpstreamUnavailable("the issuer's JWKS holds no usable key") from exc

    def _jwk_client(self) -> jwt.PyJWKClient:
        with self._lock:
            if self._client is None:
                jwks_uri = self._discover()
                try:
                    self._client = jwt.PyJWKClient(
                        jwks_uri,
                        lifespan=JWKS_CACHE_LIFESPAN_S,
                        timeout=self._timeout,
                        cooldown_duration=REFRESH_COOLDOWN_S,
                    )
                except jwt.PyJWKClientError as exc:
                    raise UpstreamUnavailable(
                        "the issuer's discovery document names an unusable jwks_uri"
                    ) from exc
            return self._client

    def _discover(self) -> str:
        assert self._issuer_url is not None
        url = self._issuer_url.rstrip("/") + "/.well-known/openid-configuration"
        try:
            with urllib.request.urlopen(url, timeout=self._timeout) as response:
                document = json.loads(response.read())
            return str(document["jwks_uri"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot read the issuer's discovery document %s: %s", url, exc)
            raise UpstreamUnavailable(
                "the token issuer's signing keys cannot be loaded; retry later"
            ) from exc


def _keyset(document: dict[str, Any]) -> jwt.PyJWKSet:
    try:
        return jwt.PyJWKSet.from_dict(document)
    except jwt.PyJWTError as exc:
        raise UpstreamUnavailable("the issuer's JWKS holds no usable key") from exc
