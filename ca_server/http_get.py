"""One HTTP(S) GET on asyncio streams, for the caller to bound by ONE deadline
(`asyncio.timeout` around the whole call: connect, TLS handshake, headers, body): a
federated trust domain's bundle endpoint, a token issuer's OIDC discovery and JWKS.

`http.client`'s timeout (and urllib's, PyJWT's) applies to each read, so a server that
trickles a byte a second never trips it; a deadline around the whole exchange does.
HTTP/1.1 with `Connection: close`; the body is `Content-Length` bytes, chunked, or read to
the end, never more than `max_body` bytes. `check_peer` sees the server's certificate
(DER; None over plain http) before the request is sent.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.parse
from collections.abc import Callable

MAX_HEAD_BYTES = 64 * 1024


class HttpGetFailed(Exception):
    """The endpoint's answer is not a usable HTTP response."""


def _no_check(der: bytes | None) -> None:
    return None


async def http_get(
    url: str,
    context: ssl.SSLContext | None,
    *,
    max_body: int,
    check_peer: Callable[[bytes | None], None] = _no_check,
) -> bytes:
    """The body of a 200 answer to GET `url` (https:// with `context`, or http://);
    `HttpGetFailed`, `OSError` (TLS errors included) or `EOFError` otherwise. Bound it with
    `asyncio.timeout`."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise HttpGetFailed(f"not an http(s) URL: {url[:200]!r}")
    tls = context if parts.scheme == "https" else None
    if parts.scheme == "https" and tls is None:
        tls = ssl.create_default_context()
    reader, writer = await asyncio.open_connection(
        host,
        parts.port or (443 if tls is not None else 80),
        ssl=tls,
        server_hostname=host if tls is not None else None,
        limit=MAX_HEAD_BYTES,
    )
    try:
        tls = writer.get_extra_info("ssl_object")
        check_peer(tls.getpeercert(binary_form=True) if tls is not None else None)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Accept: application/json\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode("ascii", "strict"))
        await writer.drain()
        status, headers = await _head(reader)
        body = await _body(reader, headers, max_body)
    except (asyncio.LimitOverrunError, UnicodeEncodeError, ValueError) as exc:
        raise HttpGetFailed(f"malformed HTTP exchange ({type(exc).__name__})") from None
    finally:
        writer.transport.abort()  # no TLS close_notify wait: all that is needed was read
    if status != 200:
        raise HttpGetFailed(f"endpoint answered HTTP {status}")
    return body


async def _head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise HttpGetFailed("the endpoint's answer is not HTTP/1.x")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise HttpGetFailed("the endpoint's answer has a malformed header line")
            headers[name.strip().lower()] = value.strip()
    return int(code), headers


async def _body(reader: asyncio.StreamReader, headers: dict[str, str], max_body: int) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _chunked(reader, max_body)
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise HttpGetFailed("the endpoint's Content-Length is not a number")
        _check_size(int(length), max_body)
        return await reader.readexactly(int(length))
    body = bytearray()
    while chunk := await reader.read(64 * 1024):
        body += chunk
        _check_size(len(body), max_body)
    return bytes(body)


async def _chunked(reader: asyncio.StreamReader, max_body: int) -> bytes:
    body = bytearray()
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16):
        _check_size(len(body) + size, max_body)
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise HttpGetFailed("the endpoint's chunked body is malformed")
    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
        pass
    return bytes(body)


def _check_size(size: int, max_body: int) -> None:
    if size > max_body:
        raise HttpGetFailed(f"the endpoint's answer is larger than {max_body} bytes")
