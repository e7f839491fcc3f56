"""The one HTTP client of the CA's admin API, for `bulwark certs` and `bulwark ca rotate`.

The flags every such command takes (`--admin-url`, `--token-file`, `-o`), reading the token
file, and GET/POST with JSON answers over stdlib urllib (no third-party HTTP at runtime).
Every failure is a `CliError` worded the same for each command; a 409 is `Refused` (the CA
understood and says the step does not apply now).
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ca_server.options import CA_OPTIONS
from certs.cli.envflags import env_flag
from certs.cli.output import add_output_flag
from certs.values import InvalidValue, parse_host_port

DEFAULT_ADMIN_URL = f"http://{CA_OPTIONS['admin_addr'].default}"  # where `ca serve` listens
TIMEOUT_S = 30.0
URL_FLAG, URL_ENV = "--admin-url", "BULWARK_ADMIN_URL"


class CliError(Exception):
    """The question could not be asked: unreachable, refused, bad input (exit 2)."""


class Refused(CliError):
    """The CA answered 409: what was asked does not apply now; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"admin API error 409: {reason}")
        self.reason = reason


def admin_client_flags(*, token_help: str) -> argparse.ArgumentParser:
    """A parent parser with what every admin API client command takes: `--admin-url`,
    `--token-file` and `-o`."""
    common = argparse.ArgumentParser(add_help=False)
    env_flag(
        common,
        URL_FLAG,
        URL_ENV,
        default=DEFAULT_ADMIN_URL,
        help="the CA's admin API (HOST:PORT alone means http://)",
    )
    env_flag(common, "--token-file", "BULWARK_ADMIN_TOKEN_FILE", help=token_help)
    add_output_flag(common)
    return common


def admin_base_url(text: str) -> str:
    """`--admin-url` checked: http(s)://HOST[:PORT][/prefix], or HOST:PORT meaning http://."""
    what = f"{URL_FLAG} (env {URL_ENV})"
    value = text.strip()
    if "://" not in value:
        parse_host_port(value, what, allow_port_zero=False)
        return f"http://{value}"
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidValue(what, "an http:// or https:// URL, or HOST:PORT", text)
    if parts.port is None and parts.netloc.endswith(":"):
        raise InvalidValue(what, "a URL with a port 1-65535", text)
    return value.rstrip("/")


def read_token(path: str | None) -> str | None:
    """The bearer token in `--token-file`, or None when no file is given."""
    if not path:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise CliError(f"cannot read --token-file {path}: {exc.strerror}") from None


class AdminClient:
    """Calls the admin API at one base URL with one bearer token."""

    def __init__(self, base_url: str, token: str | None) -> None:
        self._base = base_url.rstrip("/")
        self._token = token

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AdminClient:
        """The client `--token-file` and `--admin-url` describe (both checked here)."""
        token = read_token(args.token_file)
        return cls(admin_base_url(args.admin_url), token)

    def get(self, path: str, params: dict[str, str | None] | None = None) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None})
        return self._call("GET", path + (f"?{query}" if query else ""))

    def post(self, path: str) -> Any:
        return self._call("POST", path)

    def _call(self, method: str, path: str) -> Any:
        request = urllib.request.Request(
            f"{self._base}{path}", method=method, headers={"Accept": "application/json"}
        )
        if self._token is not None:
            request.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise _http_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(
                f"cannot reach the admin API at {self._base}: {reason}: "
                f"is the CA running? check {URL_FLAG} (env {URL_ENV})"
            ) from None
        except json.JSONDecodeError:
            raise CliError(f"the admin API at {self._base} did not answer JSON") from None


def _http_error(exc: urllib.error.HTTPError) -> CliError:
    try:
        detail = json.loads(exc.read()).get("detail")
    except (json.JSONDecodeError, AttributeError, OSError):
        detail = None
    if isinstance(detail, list):  # FastAPI validation errors
        detail = "; ".join(
            f"{'.'.join(map(str, d.get('loc', [])[1:]))}: {d.get('msg')}" for d in detail
        )
    if exc.code == 409:
        return Refused(str(detail or exc.reason))
    if exc.code == 401:
        return CliError("the admin API refused the request (401): pass a valid --token-file")
    return CliError(f"admin API error {exc.code}: {detail or exc.reason}")


__all__ = [
    "DEFAULT_ADMIN_URL",
    "AdminClient",
    "CliError",
    "Refused",
    "admin_base_url",
    "admin_client_flags",
    "read_token",
]
