"""Signing keys of one token issuer: a static JWKS file, or an OIDC issuer's published keys.

A file is read when the source is made ready (`load`, before a worker serves) and kept; an
OIDC issuer's keys are fetched on first need (discovery: one GET of
`/.well-known/openid-configuration`, kept; then its `jwks_uri`) and cached for
`JWKS_CACHE_LIFESPAN_S`. Every fetch is bounded by ONE deadline over connect, TLS, headers
and body (`ca_server.http_get`), so an issuer that trickles bytes cannot hold a request.

An unknown `kid` re-reads the keys at most once per `REFRESH_COOLDOWN_S`, so a flood of
made-up key ids costs the issuer one request per cooldown. Keys that cannot be loaded are
never taken for "no such key": a source holding no keys, or whose last re-read failed,
answers `UpstreamUnavailable` (retry) and keeps the keys it had.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt

from ca_server.errors import AuthenticationError, UpstreamUnavailable
from ca_server.http_get import HttpGetFailed, http_get
from ca_server.identity import shown

log = logging.getLogger(__name__)

REFRESH_COOLDOWN_S = 10.0
JWKS_CACHE_LIFESPAN_S = 300.0
FETCH_DEADLINE_S = 5.0  # one discovery or JWKS GET, from connect to the body's last byte
MAX_DOCUMENT_BYTES = 1024 * 1024
DISCOVERY_PATH = "/.well-known/openid-configuration"
RETRY_LATER = "the token issuer's signing keys cannot be loaded; retry later"


async def fetch_json(url: str, deadline_s: float = FETCH_DEADLINE_S) -> dict[str, Any]:
    """GET `url` (http or https, system trust store) within `deadline_s` in all, as a JSON
    object; `UpstreamUnavailable` saying what went wrong otherwise."""
    try:
        async with asyncio.timeout(deadline_s):
            body = await http_get(url, None, max_body=MAX_DOCUMENT_BYTES)
        document = json.loads(body)
    except TimeoutError:
        raise UpstreamUnavailable(f"{url} did not answer in full within {deadline_s:g} s") from None
    except (OSError, EOFError, HttpGetFailed) as exc:
        raise UpstreamUnavailable(f"cannot fetch {url}: {exc or type(exc).__name__}") from exc
    except ValueError as exc:
        raise UpstreamUnavailable(f"{url} did not answer JSON") from exc
    if not isinstance(document, dict):
        raise UpstreamUnavailable(f"{url} did not answer a JSON object")
    return document


async def fetch_issuer_keys(issuer_url: str, deadline_s: float = FETCH_DEADLINE_S) -> jwt.PyJWKSet:
    """An OIDC issuer's published keys: discovery, then its `jwks_uri` (each GET within
    `deadline_s`); `UpstreamUnavailable` naming the step that failed."""
    discovery = issuer_url.rstrip("/") + DISCOVERY_PATH
    document = await fetch_json(discovery, deadline_s)
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
        raise UpstreamUnavailable(f"{discovery} names no http(s) jwks_uri")
    return keyset(await fetch_json(jwks_uri, deadline_s), jwks_uri)


def keyset(document: dict[str, Any], where: str) -> jwt.PyJWKSet:
    """The usable keys of a JWKS document; `UpstreamUnavailable` when it holds none."""
    try:
        return jwt.PyJWKSet.from_dict(document)
    except jwt.PyJWTError as exc:
        raise UpstreamUnavailable(f"the JWKS at {where} holds no usable key ({exc})") from exc


class UnknownKeyId(AuthenticationError):
    """A token's `kid` names no key of the issuer (the authenticator adds whose)."""


class JwksSource:
    """The issuer's keys by `kid`; `key_for(None)` gives every key (tokens without a `kid`)."""

    def __init__(
        self,
        *,
        jwks_file: Path | None = None,
        issuer_url: str | None = None,
        timeout_s: float = FETCH_DEADLINE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if jwks_file is None and issuer_url is None:
            raise ValueError("JwksSource needs a JWKS file or an issuer URL")
        self._file = jwks_file
        self._issuer_url = issuer_url
        self._timeout = timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: list[jwt.PyJWK] = []
        self._loaded_at = float("-inf")  # when the keys were last read successfully
        self._tried_at = float("-inf")  # when a read was last attempted
        self._error: UpstreamUnavailable | None = None  # why the last read failed

    @property
    def remote(self) -> bool:
        """Whether a refresh reads the network (discovery) rather than a local file."""
        return self._file is None

    def load(self) -> None:
        """Read the keys now (a worker does before it serves); `UpstreamUnavailable` if not."""
        with self._lock:
            self._read()

    def key_for(self, kid: str | None) -> list[jwt.PyJWK]:
        """The keys a token with this `kid` may be signed with; `AuthenticationError` when the
        issuer has no such key, `UpstreamUnavailable` when its keys cannot be read now."""
        with self._lock:
            if self._stale(kid) and self._clock() - self._tried_at >= REFRESH_COOLDOWN_S:
                with contextlib.suppress(UpstreamUnavailable):
                    self._read()
            keys, error = list(self._keys), self._error
        found = keys if kid is None else [k for k in keys if k.key_id == kid]
        if found:
            return found
        if error is not None or not keys:  # the key may well be there: it could not be read
            raise UpstreamUnavailable(RETRY_LATER) from error
        raise UnknownKeyId(f"token key id {shown(kid)} is not among the issuer's signing keys")

    def _stale(self, kid: str | None) -> bool:
        if not self._keys or self._error is not None:
            return True
        if kid is not None and kid not in {k.key_id for k in self._keys}:
            return True
        return self.remote and self._clock() - self._loaded_at >= JWKS_CACHE_LIFESPAN_S

    def _read(self) -> None:
        """Replace the keys with a fresh read, or keep them and raise `UpstreamUnavailable`
        (caused by what failed, an EMFILE for instance)."""
        self._tried_at = self._clock()
        try:
            keys = self._read_file() if self._file is not None else self._fetch()
        except UpstreamUnavailable as exc:
            if self._error is None or exc.public_message != self._error.public_message:
                log.warning("cannot load the token issuer's keys: %s", exc.public_message)
            self._error = exc
            raise
        if self._error is not None:
            log.info("the token issuer's keys are loaded again (%d key(s))", len(keys))
        self._keys, self._loaded_at, self._error = keys, self._tried_at, None

    def _read_file(self) -> list[jwt.PyJWK]:
        assert self._file is not None
        try:
            document = json.loads(self._file.read_text())
        except OSError as exc:
            raise UpstreamUnavailable(f"cannot read {self._file}: {exc.strerror}") from exc
        except ValueError as exc:
            raise UpstreamUnavailable(f"{self._file} is not JSON") from exc
        if not isinstance(document, dict):
            raise UpstreamUnavailable(f"{self._file} is not a JSON object")
        return list(keyset(document, str(self._file)).keys)

    def _fetch(self) -> list[jwt.PyJWK]:
        """The issuer's keys over the network: this runs on a request's thread (the caller
        moved the request off the event loop: `may_block`), so it has a loop of its own."""
        assert self._issuer_url is not None
        return list(asyncio.run(fetch_issuer_keys(self._issuer_url, self._timeout)).keys)
