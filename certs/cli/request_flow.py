"""The steps of `bulwark cert request`: identity, credentials, the call, the checks, the files."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from certs.cli.request_hints import rpc_message
from certs.csr import build_csr
from certs.errors import CertsError
from certs.files import write_atomic
from certs.istio_files import CERT_CHAIN, KEY, ROOT_CERT
from certs.keys import KeyType, PrivateKey, generate_key, load_private_key, private_key_pem
from certs.pem import bundle_pem, load_certificates, serial_hex
from certs.spiffe_id import SpiffeId, TrustDomain
from certs.values import time_left
from certs.verify import spiffe_id_of, verify_svid

TIMEOUT_S = 30.0


class RequestError(CertsError):
    """The certificate could not be obtained; the message says what to fix."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """Everything one request needs, checked by the command line."""

    ca_addr: str
    root: Path
    server_name: str
    token_file: Path | None
    renew_from: Path | None
    spiffe_id: str | None
    trust_domain: str
    namespace: str | None
    service_account: str | None
    ttl: timedelta
    key_type: KeyType
    out: Path
    ttl_text: str = ""  # --ttl as typed, for messages in the user's unit


@dataclass(frozen=True, slots=True)
class _Credentials:
    metadata: tuple[tuple[str, str], ...]
    client_key: bytes | None = None
    client_chain: bytes | None = None
    current: x509.Certificate | None = None


def obtain(plan: Plan, *, now: datetime) -> dict[str, Any]:
    roots = load_certificates(_read(plan.root, "--root"), what=str(plan.root))
    creds = _credentials(plan)
    identity = _identity(plan, creds.current)
    key = generate_key(plan.key_type)
    pem_chain = _call(plan, creds, build_csr(key, identity).decode())
    chain = _check(pem_chain, roots, key, identity, now)
    return _write(plan.out, key, chain, roots, now)


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise RequestError(f"cannot read {flag} {path}: {exc.strerror}") from None


def _credentials(plan: Plan) -> _Credentials:
    if plan.token_file is not None:
        token = _read(plan.token_file, "--token-file").decode(errors="replace").strip()
        if not token:
            raise RequestError(f"--token-file {plan.token_file} is empty")
        return _Credentials(metadata=(("authorization", f"Bearer {token}"),))
    assert plan.renew_from is not None
    chain_path, key_path = plan.renew_from / CERT_CHAIN, plan.renew_from / KEY
    chain_pem = _read(chain_path, "--renew-from")
    key_pem = _read(key_path, "--renew-from")
    current = load_certificates(chain_pem, what=str(chain_path))[0]
    try:
        load_private_key(key_pem)
    except (CertsError, ValueError) as exc:
        raise RequestError(f"{key_path} holds no usable key: {exc}") from None
    return _Credentials(metadata=(), client_key=key_pem, client_chain=chain_pem, current=current)


def _identity(plan: Plan, current: x509.Certificate | None) -> SpiffeId:
    if plan.spiffe_id:
        return SpiffeId.parse(plan.spiffe_id)
    if plan.namespace and plan.service_account:
        return SpiffeId.for_service_account(
            TrustDomain(plan.trust_domain), plan.namespace, plan.service_account
        )
    if current is not None:
        return spiffe_id_of(current)
    raise RequestError("say which identity: --spiffe-id, or --namespace and --service-account")


def _call(plan: Plan, creds: _Credentials, csr_pem: str) -> list[str]:
    import grpc

    from protos.istio.v1.auth import ca_pb2, ca_pb2_grpc

    root_pem = plan.root.read_bytes()
    channel_creds = grpc.ssl_channel_credentials(
        root_pem, private_key=creds.client_key, certificate_chain=creds.client_chain
    )
    options = [("grpc.ssl_target_name_override", plan.server_name)]
    request = ca_pb2.IstioCertificateRequest(
        csr=csr_pem, validity_duration=int(plan.ttl.total_seconds())
    )
    with grpc.secure_channel(plan.ca_addr, channel_creds, options=options) as channel:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
        try:
            response = stub.CreateCertificate(request, metadata=creds.metadata, timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            raise RequestError(rpc_message(plan, exc)) from None
    return list(response.cert_chain)


def _check(
    pem_chain: list[str],
    roots: list[x509.Certificate],
    key: PrivateKey,
    identity: SpiffeId,
    now: datetime,
) -> list[x509.Certificate]:
    if len(pem_chain) < 2:
        raise RequestError(
            f"the CA answered with {len(pem_chain)} certificate(s); at least 2 expected"
        )
    chain = [c for pem in pem_chain for c in load_certificates(pem, what="the CA's answer")]
    try:
        got = verify_svid(chain, roots, now=now)
    except CertsError as exc:
        raise RequestError(f"the CA's answer does not verify against --root: {exc}") from None
    if got != identity:
        raise RequestError(f"the CA issued {got}, not the {identity} asked for")
    spki = PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(Encoding.DER, spki) != key.public_key().public_bytes(
        Encoding.DER, spki
    ):
        raise RequestError("the CA's certificate is not for the key this request made")
    return chain


def _write(
    out: Path,
    key: PrivateKey,
    chain: list[x509.Certificate],
    roots: list[x509.Certificate],
    now: datetime,
) -> dict[str, Any]:
    """key.pem (0600) first, so a chain on disk always has its key; the root last."""
    issued = [c for c in chain if c not in roots] or chain[:1]
    files = {
        "key": out / KEY,
        "cert_chain": out / CERT_CHAIN,
        "root_cert": out / ROOT_CERT,
    }
    write_atomic(files["key"], private_key_pem(key), mode=0o600)
    write_atomic(files["cert_chain"], bundle_pem(issued).encode())
    write_atomic(files["root_cert"], bundle_pem(roots).encode())
    leaf = chain[0]
    left = (leaf.not_valid_after_utc - now).total_seconds()
    return {
        "spiffe_id": str(spiffe_id_of(leaf)),
        "serial": serial_hex(leaf),
        "not_after": leaf.not_valid_after_utc.isoformat(),
        "time_left": time_left(left),
        "files": {k: str(v) for k, v in files.items()},
    }
