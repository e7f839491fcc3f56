"""Bytes that are no IstioCertificateRequest: INVALID_ARGUMENT with a short message, no traceback.

A real `grpc.aio` server on 127.0.0.1:0 in this process runs the worker's servicer,
registered as the worker registers it; the client sends raw bytes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest

from ca_server.issuance.service import SERVICE_NAME, add_to_server
from tests.support.testca import TestCa

# field 1 (csr), length-delimited, two bytes that are not UTF-8
NOT_UTF8_CSR = b"\x0a\x02\xff\xfe"
UNDECODABLE = [
    pytest.param(b"\xff\xff\xff", id="not protobuf"),
    pytest.param(b"\x0a\x10abc", id="truncated field"),
    pytest.param(NOT_UTF8_CSR, id="csr not UTF-8"),
]


@pytest.mark.parametrize("payload", UNDECODABLE)
async def test_undecodable_request_is_invalid_argument_without_traceback(
    tmp_path: Path, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Covers #12 (undecodable requests): grpc answered UNKNOWN "Unexpected <class
    'google.protobuf.message.DecodeError'>" and logged a traceback."""
    ca = TestCa.create(tmp_path)
    server = grpc.aio.server()
    add_to_server(ca.service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(
                f"/{SERVICE_NAME}/CreateCertificate",
                request_serializer=lambda raw: raw,
                response_deserializer=lambda raw: raw,
            )
            with caplog.at_level(logging.INFO), pytest.raises(grpc.aio.AioRpcError) as err:
                await call(payload, timeout=10)
    finally:
        await server.stop(None)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    details = err.value.details() or ""
    assert "not a valid IstioCertificateRequest" in details and len(details) < 200
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    assert (
        ca.metric("bulwark_ca_refusals_total", reason="bad_request", code="INVALID_ARGUMENT") == 1
    )
