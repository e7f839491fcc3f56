"""A SPIFFE caller for tests: `python -m tests.support.spiffe_fetch SOCKET WHAT...`, one JSON line.

WHAT: `x509` (the `spiffe` package's `WorkloadApiClient.fetch_x509_svid`: SPIFFE ID, chain
and bundle in PEM), `jwt AUDIENCE` (`fetch_jwt_svid`), `raw-x509` (the Workload API's
generated stub: the refusal's exact status code and details), `sds NAME` (an Envoy-style SDS
`FetchSecrets` of NAME), `hold SECONDS` (open a FetchX509SVID stream, print each SVID's serial
as it comes, until the stream ends or SECONDS pass), `switch-uid UID` (one call, then change
user and call again on the same connection). Run as another user by the tests
(`tests.support.node_agent.run_as`) to be a caller of that uid on a node agent's socket.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import grpc


def _x509(socket: str) -> dict[str, Any]:
    from cryptography.hazmat.primitives.serialization import Encoding
    from spiffe import WorkloadApiClient

    with WorkloadApiClient(socket_path=f"unix://{socket}") as client:
        svid = client.fetch_x509_svid()
        bundles = client.fetch_x509_bundles()
    bundle = bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
    roots = bundle.x509_authorities if bundle is not None else []
    return {
        "spiffe_id": str(svid.spiffe_id),
        "chain": "".join(c.public_bytes(Encoding.PEM).decode() for c in svid.cert_chain),
        "bundle": "".join(c.public_bytes(Encoding.PEM).decode() for c in roots),
    }


def _jwt(socket: str, audience: str) -> dict[str, Any]:
    from spiffe import WorkloadApiClient

    with WorkloadApiClient(socket_path=f"unix://{socket}") as client:
        svid = client.fetch_jwt_svid(audience={audience})
    return {"spiffe_id": str(svid.spiffe_id), "token": svid.token}


def _raw_x509(socket: str) -> dict[str, Any]:
    from spiffe._proto import workload_pb2, workload_pb2_grpc

    with grpc.insecure_channel(f"unix:{socket}") as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        stream = stub.FetchX509SVID(
            workload_pb2.X509SVIDRequest(), metadata=[("workload.spiffe.io", "true")], timeout=20
        )
        first = next(stream)
        stream.cancel()
    return {"spiffe_id": first.svids[0].spiffe_id}


def _sds(socket: str, name: str) -> dict[str, Any]:
    from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
    from envoy.service.discovery.v3 import discovery_pb2
    from envoy.service.secret.v3 import sds_pb2_grpc

    with grpc.insecure_channel(f"unix:{socket}") as channel:
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        response = stub.FetchSecrets(
            discovery_pb2.DiscoveryRequest(node={"id": "test~node"}, resource_names=[name]),
            timeout=20,
        )
    secret = secret_pb2.Secret()
    response.resources[0].Unpack(secret)
    chain = secret.tls_certificate.certificate_chain.inline_bytes.decode()
    return {"name": secret.name, "chain": chain}


def _hold(socket: str, seconds: float) -> dict[str, Any]:
    from cryptography import x509
    from spiffe._proto import workload_pb2, workload_pb2_grpc

    serials = []
    deadline = time.monotonic() + seconds
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        stream = stub.FetchX509SVID(
            workload_pb2.X509SVIDRequest(),
            metadata=[("workload.spiffe.io", "true")],
            timeout=max(1.0, deadline - time.monotonic()),
        )
        try:
            for response in stream:
                leaf = x509.load_der_x509_certificate(response.svids[0].x509_svid)
                serials.append(format(leaf.serial_number, "x"))
                print(
                    json.dumps({"serial": serials[-1], "spiffe_id": response.svids[0].spiffe_id}),
                    flush=True,
                )
        except grpc.RpcError as exc:
            return {"serials": serials, "ended": exc.code().name, "details": exc.details()}
    return {"serials": serials, "ended": "OK"}


def _switch_uid(socket: str, uid: int) -> dict[str, Any]:
    """One FetchX509SVID as this process's user, then setresuid(uid) and a second call on the
    same connection: a caller that changes user after connecting."""
    import os

    from spiffe._proto import workload_pb2, workload_pb2_grpc

    header = [("workload.spiffe.io", "true")]
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        first = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=header, timeout=20)
        before = next(first).svids[0].spiffe_id
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        try:
            again = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=header, timeout=20)
            after = {"spiffe_id": next(again).svids[0].spiffe_id}
        except grpc.RpcError as exc:
            after = {"code": exc.code().name, "error": exc.details()}
        try:
            ended = next(first).svids[0].spiffe_id
        except grpc.RpcError as exc:
            ended = exc.code().name
    return {"before": before, "after": after, "first_stream": ended}


def main(argv: list[str]) -> int:
    import warnings

    warnings.simplefilter("ignore")  # the spiffe package's own deprecation warnings
    from spiffe.errors import PySpiffeError

    socket, what, *rest = argv
    try:
        if what == "x509":
            result = _x509(socket)
        elif what == "jwt":
            result = _jwt(socket, rest[0])
        elif what == "raw-x509":
            result = _raw_x509(socket)
        elif what == "sds":
            result = _sds(socket, rest[0])
        elif what == "hold":
            result = _hold(socket, float(rest[0]))
        elif what == "switch-uid":
            result = _switch_uid(socket, int(rest[0]))
        else:
            raise SystemExit(f"unknown request {what!r}")
    except grpc.RpcError as exc:
        result = {"code": exc.code().name, "error": exc.details()}
    except PySpiffeError as exc:  # the spiffe package wraps the gRPC error in its own
        cause = exc.__cause__ or exc.__context__
        code = cause.code().name if isinstance(cause, grpc.RpcError) else type(exc).__name__
        result = {"code": code, "error": str(exc)}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
