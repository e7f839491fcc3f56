"""The few Kubernetes API calls a node agent makes: list and watch the pods of its node.

A small HTTP/1.1 client over asyncio streams and the standard library's TLS, not a
Kubernetes client library: the node agent needs two GETs (a list, then a chunked watch
stream of JSON lines), and `lightkube` with `httpx` would add about 10 MB to its resident
memory. Credentials come from a kubeconfig (`--kubeconfig`: token, token file or client
certificate; the server's CA as a file or inline) or from the pod's service account
(`/var/run/secrets/kubernetes.io/serviceaccount`), whose token is re-read for every request
(projected tokens are renewed on disk).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from agent.errors import ConfigError

if TYPE_CHECKING:
    import ssl

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MAX_BODY_BYTES = 64 << 20
MAX_LINE_BYTES = 8 << 20
CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 60.0
# A watch connection that died without a word (a node's network gone) is noticed by TCP
# keepalive within about a minute; the server also ends every watch after timeoutSeconds.
KEEPALIVE = {"TCP_KEEPIDLE": 30, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 3}


class KubeApiError(Exception):
    """A request failed; `status` is the HTTP status (0 when the server was not reached)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class KubeApi:
    """GET requests to one API server with one identity."""

    def __init__(
        self,
        *,
        server: str,
        context: ssl.SSLContext,
        token: str = "",
        token_file: Path | None = None,
    ) -> None:
        parts = urlsplit(server)
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigError(f"the API server {server!r} must be an https:// URL")
        self.server = server
        self._host = parts.hostname
        self._port = parts.port or 443
        self._prefix = parts.path.rstrip("/")
        self._context = context
        self._token = token
        self._token_file = token_file

    @classmethod
    def in_cluster(cls, host: str, port: str) -> KubeApi:
        """The pod's own service account (KUBERNETES_SERVICE_HOST/PORT, the mounted token)."""
        ssl = _ssl()
        context = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT_DIR / "ca.crt"))
        shown = f"[{host}]" if ":" in host else host
        return cls(
            server=f"https://{shown}:{port or 443}",
            context=context,
            token_file=SERVICE_ACCOUNT_DIR / "token",
        )

    @classmethod
    def from_kubeconfig(cls, path: Path) -> KubeApi:
        """The current context of a kubeconfig file (JSON or YAML)."""
        import yaml  # only read here

        try:
            config = yaml.safe_load(path.read_text())
            context_name = config["current-context"]
            context = _named(config["contexts"], context_name)["context"]
            cluster = _named(config["clusters"], context["cluster"])["cluster"]
            user = _named(config["users"], context["user"])["user"] or {}
        except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"--kubeconfig {path}: cannot use it ({type(exc).__name__}: {exc})"
            ) from None
        base = path.parent
        ssl = _ssl()
        tls = ssl.create_default_context(
            cafile=_path(cluster.get("certificate-authority"), base),
            cadata=_data(cluster.get("certificate-authority-data")),
        )
        if user.get("client-certificate") or user.get("client-certificate-data"):
            _load_client_certificate(tls, user, base)
        token_file = _path(user.get("tokenFile"), base)
        return cls(
            server=cluster["server"],
            context=tls,
            token=user.get("token", "") or "",
            token_file=Path(token_file) if token_file else None,
        )

    async def get_json(self, path: str, query: dict[str, str]) -> dict[str, Any]:
        """One GET answered with a JSON object, or `KubeApiError`."""
        reader, writer = await self._request(path, query)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                headers = await _response_head(reader)
                body = b"".join([c async for c in _body(reader, headers, MAX_BODY_BYTES)])
        except TimeoutError:
            raise KubeApiError(
                f"the API server did not answer in {REQUEST_TIMEOUT_S:.0f}s"
            ) from None
        finally:
            writer.close()
        return _json(body)

    async def watch(self, path: str, query: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
        """A watch: one JSON event per line until the server ends the stream."""
        reader, writer = await self._request(path, {**query, "watch": "1"})
        try:
            headers = await _response_head(reader)
            pending = b""
            async for chunk in _body(reader, headers, None):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield _json(line)
                if len(pending) > MAX_LINE_BYTES:
                    raise KubeApiError("the API server sent an overlong watch event")
        finally:
            writer.close()

    async def _request(
        self, path: str, query: dict[str, str]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(
                    self._host,
                    self._port,
                    ssl=self._context,
                    server_hostname=self._host,
                    limit=MAX_LINE_BYTES,
                )
        except (OSError, TimeoutError) as exc:
            raise KubeApiError(f"cannot reach the API server {self.server}: {exc}") from None
        _keepalive(writer)
        lines = [
            f"GET {self._prefix}{path}?{urlencode(query)} HTTP/1.1",
            f"Host: {self._host}",
            "Accept: application/json",
            "User-Agent: bulwark-node-agent",
            "Connection: close",
        ]
        token = self._current_token()
        if token:
            lines.append(f"Authorization: Bearer {token}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        return reader, writer

    def _current_token(self) -> str:
        if self._token_file is not None:
            try:
                return self._token_file.read_text().strip()
            except OSError as exc:
                raise KubeApiError(
                    f"cannot read the token {self._token_file}: {exc.strerror}"
                ) from None
        return self._token


async def _response_head(reader: asyncio.StreamReader) -> dict[str, str]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as exc:
        raise KubeApiError(f"the API server's answer ended early ({type(exc).__name__})") from None
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(status_line.split(" ", 2)[1])
    except (IndexError, ValueError):
        raise KubeApiError(f"the API server answered {status_line[:80]!r}") from None
    headers = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if status != 200:
        detail: object = ""
        with contextlib.suppress(KubeApiError, TimeoutError):
            async with asyncio.timeout(5):
                body = b"".join([c async for c in _body(reader, headers, 65536)])
            detail = _json(body).get("message", "")
        raise KubeApiError(f"the API server answered {status}: {str(detail)[:200]}", status)
    return headers


async def _body(
    reader: asyncio.StreamReader, headers: dict[str, str], limit: int | None
) -> AsyncIterator[bytes]:
    """The body's bytes as they come: chunked, sized, or up to the end of the connection."""
    seen = 0
    try:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    return
                chunk = await reader.readexactly(size + 2)
                seen += size
                if limit is not None and seen > limit:
                    raise KubeApiError("the API server's answer is too large")
                yield chunk[:-2]
        elif "content-length" in headers:
            size = int(headers["content-length"])
            if limit is not None and size > limit:
                raise KubeApiError("the API server's answer is too large")
            yield await reader.readexactly(size)
        else:
            while chunk := await reader.read(65536):
                seen += len(chunk)
                if limit is not None and seen > limit:
                    raise KubeApiError("the API server's answer is too large")
                yield chunk
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, ValueError) as exc:
        raise KubeApiError(f"the API server's answer broke off ({type(exc).__name__})") from None


def _keepalive(writer: asyncio.StreamWriter) -> None:
    import socket

    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in KEEPALIVE.items():
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _json(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        raise KubeApiError("the API server sent something that is not JSON") from None
    if not isinstance(value, dict):
        raise KubeApiError("the API server sent JSON that is not an object")
    return value


def _ssl() -> Any:
    try:
        import ssl
    except ImportError:
        raise ConfigError(
            "this Python process has no TLS module for the API server: start node mode with "
            "`bulwark agent run --mode node` or `python -m agent --mode node`"
        ) from None
    return ssl


def _named(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    for item in items:
        if item.get("name") == name:
            return item
    raise KeyError(name)


def _path(value: str | None, base: Path) -> str | None:
    if not value:
        return None
    return str(value if os.path.isabs(value) else base / value)


def _data(value: str | None) -> str | None:
    return base64.b64decode(value).decode() if value else None


def _load_client_certificate(context: ssl.SSLContext, user: dict[str, Any], base: Path) -> None:
    """The client certificate and key, from files or inline (written to a private temporary
    file only for as long as the TLS library reads it)."""
    cert = _path(user.get("client-certificate"), base)
    key = _path(user.get("client-key"), base)
    if cert and key:
        context.load_cert_chain(cert, key)
        return
    with tempfile.TemporaryDirectory() as private:
        pem = Path(private) / "client.pem"
        fd = os.open(pem, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(base64.b64decode(user.get("client-certificate-data", "")))
            out.write(b"\n")
            out.write(base64.b64decode(user.get("client-key-data", "")))
        context.load_cert_chain(str(pem))
