"""What a running agent serves, read over its socket: the engine of `bulwark agent status`.

Like `istioctl proxy-config secret`: every resource with its SPIFFE ID,
serial, validity and time left, plus the root fingerprints, fetched the way
Envoy (SDS `FetchSecrets`) and SPIFFE libraries (Workload API) fetch them.
Private keys are received (the protocol sends them) but never shown.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from agent.endpoints.resources import DEFAULT, ROOTCA, SECRET_TYPE_URL
from agent.endpoints.status import describe_cert
from agent.endpoints.workload_proto import SECURITY_HEADER, SERVICE, workload_pb2
from certs.errors import CertsError
from certs.pem import load_certificates

TIMEOUT_S = 5.0


def inspect_agent(socket_path: str, extra: Sequence[str] = ()) -> dict[str, Any]:
    """A JSON-ready description of the agent behind `socket_path`.

    Blocking gRPC on purpose: a one-shot CLI needs no event loop, and grpc.aio
    bound to a fresh `asyncio.run` loop on each call (as tests that run the
    CLI in-process do) fails once an earlier loop has closed.
    """
    now = datetime.now(UTC)
    target = f"unix:{os.path.abspath(socket_path)}"
    with grpc.insecure_channel(target) as channel:
        sds = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        resources = [_fetch(sds, name, now) for name in (DEFAULT, ROOTCA, *extra)]
        workload = _workload_api(channel, now)
    return {
        "socket": socket_path,
        "checked_at": now.isoformat(),
        "resources": resources,
        "workload_api": workload,
    }


def _fetch(sds: Any, name: str, now: datetime) -> dict[str, Any]:
    request = discovery_pb2.DiscoveryRequest(
        node={"id": "bulwark-agent-status"}, resource_names=[name], type_url=SECRET_TYPE_URL
    )
    try:
        response = sds.FetchSecrets(request, timeout=TIMEOUT_S)
    except grpc.RpcError as exc:
        return {"name": name, "status": exc.code().name, "error": exc.details()}
    secret = secret_pb2.Secret()
    response.resources[0].Unpack(secret)
    if secret.HasField("tls_certificate"):
        certs = _certs(secret.tls_certificate.certificate_chain)
        leaf = describe_cert(certs[0], now) if certs else None
        return {
            "name": name,
            "type": "Cert Chain",
            "status": "ACTIVE",
            "version": response.version_info,
            "leaf": leaf,
            "chain": [describe_cert(c, now) for c in certs],
        }
    certs = _certs(secret.validation_context.trusted_ca)
    return {
        "name": name,
        "type": "CA",
        "status": "ACTIVE",
        "version": response.version_info,
        "roots": [describe_cert(c, now) for c in certs],
    }


def _certs(source: base_pb2.DataSource) -> list[x509.Certificate]:
    try:
        return load_certificates(source.inline_bytes, what="secret")
    except CertsError:
        return []


def _workload_api(channel: grpc.Channel, now: datetime) -> dict[str, Any]:
    pb = workload_pb2()
    call = channel.unary_stream(
        f"/{SERVICE}/FetchX509SVID",
        request_serializer=pb.X509SVIDRequest.SerializeToString,
        response_deserializer=pb.X509SVIDResponse.FromString,
    )(pb.X509SVIDRequest(), metadata=((SECURITY_HEADER, "true"),), timeout=TIMEOUT_S)
    try:
        response = next(call, None)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return {"status": "PENDING", "error": "no X.509-SVID within the timeout"}
        return {"status": exc.code().name, "error": exc.details()}
    finally:
        call.cancel()
    if response is None or not response.svids:
        return {"status": "EMPTY", "error": "the stream ended without an SVID"}
    svid = response.svids[0]
    leaf = x509.load_der_x509_certificate(_split_der(svid.x509_svid)[0])
    roots = [x509.load_der_x509_certificate(d) for d in _split_der(svid.bundle)]
    return {
        "status": "ACTIVE",
        "spiffe_id": svid.spiffe_id,
        "leaf": describe_cert(leaf, now),
        "bundle": [describe_cert(c, now) for c in roots],
    }


def _split_der(data: bytes) -> list[bytes]:
    """Split concatenated DER certificates (each a SEQUENCE with a definite length)."""
    out = []
    while len(data) >= 2 and data[0] == 0x30:
        if data[1] < 0x80:
            end = 2 + data[1]
        else:
            size_len = data[1] & 0x7F
            end = 2 + size_len + int.from_bytes(data[2 : 2 + size_len], "big")
        out.append(data[:end])
        data = data[end:]
    return out


_HEADER = ("RESOURCE", "STATUS", "SPIFFE ID", "SERIAL", "TIME LEFT")


def format_report(report: dict[str, Any]) -> str:
    """The table of `bulwark agent status`, within 100 columns (dates and types: `-o json`)."""
    from certs.cli.output import table

    rows: list[tuple[str, ...]] = []
    fingerprints: list[str] = []
    for res in report["resources"]:
        if res["status"] != "ACTIVE":
            rows.append((res["name"], res["status"], res.get("error", "") or "-", "-", "-"))
            continue
        if res["type"] == "CA":
            fingerprints.extend(f"{r['sha256']}  {r['subject']}" for r in res["roots"])
            cert = res["roots"][0] if res["roots"] else None
        else:
            cert = res["leaf"]
        rows.append((res["name"], *_cert_columns(cert, res["type"])))
    lines = table(_HEADER, rows, shrink=(0, 2))
    lines.append("")
    lines.append("Root fingerprints (SHA-256):")
    lines.extend(f"  {f}" for f in dict.fromkeys(fingerprints) or ["none"])
    wl = report["workload_api"]
    if wl["status"] == "ACTIVE":
        lines.append(
            f"Workload API: {wl['spiffe_id']} serial {wl['leaf']['serial']}, "
            f"{len(wl['bundle'])} root(s) in bundle"
        )
    else:
        lines.append(f"Workload API: {wl['status']}: {wl.get('error', '')}")
    return "\n".join(lines)


def _cert_columns(cert: dict[str, Any] | None, kind: str) -> tuple[str, ...]:
    """STATUS, SPIFFE ID, SERIAL, TIME LEFT of one served certificate."""
    from certs.values import time_left

    if not cert:
        return ("EMPTY", "-", "-", "-")
    if cert["seconds_left"] <= 0:
        status = "EXPIRED"
    elif cert["not_before"] > datetime.now(UTC).isoformat():
        status = "NOT YET VALID"
    else:
        status = "ACTIVE"
    spiffe_id = "-" if kind == "CA" else ",".join(cert["uri_sans"]) or "-"
    return (status, spiffe_id, cert["serial"], time_left(cert["seconds_left"]))
