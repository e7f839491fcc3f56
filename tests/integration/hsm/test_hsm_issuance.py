"""A CA whose root key lives in a real SoftHSM2 token: what it issues verifies with
`openssl verify -x509_strict` and through py-spiffe's Workload API client (a real agent in
between), its JWT-SVIDs (keys in the token too) validate, and after the run neither its data
dir nor its record holds a private key. The key's attributes are read back through PKCS#11
twice: with python-pkcs11 directly and with OpenSC's pkcs11-tool."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from spiffe import JwtSource, WorkloadApiClient, X509Source

from certs.pem import load_certificates
from tests.support.agent import agent_config, running_agent
from tests.support.ca_client import channel, create_certificate
from tests.support.hsm_ca import (
    CA_LABEL,
    TokenIssuer,
    admin_json,
    bulwark,
    hsm_init,
    key_attributes,
    private_keys_under,
    start_hsm_ca,
)
from tests.support.openssl import key_and_csr, openssl
from tests.support.softhsm import USER_PIN, SoftHsm

FRONTEND = "spiffe://cluster.local/ns/demo/sa/frontend"
BACKEND = "spiffe://cluster.local/ns/demo/sa/backend"


def _strict_verify(tmp_path: Path, chain: list[str], roots: Path) -> str:
    leaf = tmp_path / "leaf.pem"
    leaf.write_text(chain[0])
    untrusted = tmp_path / "untrusted.pem"
    untrusted.write_text("".join(chain[1:-1]))
    args = ["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile", str(roots)]
    if chain[1:-1]:
        args += ["-untrusted", str(untrusted)]
    return openssl(*args, str(leaf))


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-3072"])
def test_each_key_type_signs_certificates_openssl_accepts(
    tmp_path: Path, softhsm: SoftHsm, key_type: str
) -> None:
    made = hsm_init(softhsm, key_type=key_type)
    issuer = TokenIssuer(tmp_path / "issuer")
    ca = start_hsm_ca(tmp_path / "ca", softhsm, issuer, "--jwt-keys-in-hsm", workers=1)
    try:
        _, csr = key_and_csr(tmp_path, FRONTEND)
        chain = create_certificate(
            channel(ca.grpc_addr, ca.root_cert_path),
            csr.read_bytes(),
            token=issuer.mint("demo", "frontend"),
        )
        assert ": OK" in _strict_verify(tmp_path, chain, ca.root_cert_path)
        assert load_certificates(chain[-1]) == load_certificates(ca.root_cert_path.read_bytes())
        location = admin_json(ca, "/v1/ca")["signing_key"]
        assert location == {
            "storage": "pkcs11",
            "token": "bulwark",
            "object": CA_LABEL,
            "id": made["id"],
            "key_type": made["key_type"],
        }
        shown = bulwark(softhsm, "inspect", "--ca", ca.admin_addr)
        assert "in an HSM (PKCS#11)" in shown.stdout and f"object      {CA_LABEL}" in shown.stdout
        as_json = json.loads(bulwark(softhsm, "inspect", "--ca", ca.admin_url, "-o", "json").stdout)
        assert as_json["signing_key"] == location and len(as_json["certificates"]) == 1
        assert USER_PIN not in shown.stdout + ca.log()
    finally:
        ca.stop()
    assert private_keys_under(tmp_path / "ca") == []


async def test_py_spiffe_and_openssl_accept_and_no_key_touches_disk(
    tmp_path: Path, softhsm: SoftHsm
) -> None:
    hsm_init(softhsm)
    issuer = TokenIssuer(tmp_path / "issuer")
    ca = start_hsm_ca(tmp_path / "ca", softhsm, issuer, "--jwt-keys-in-hsm")
    try:
        _, csr = key_and_csr(tmp_path, FRONTEND)
        chain = await asyncio.to_thread(
            create_certificate,
            channel(ca.grpc_addr, ca.root_cert_path),
            csr.read_bytes(),
            token=issuer.mint("demo", "frontend"),
        )
        assert ": OK" in _strict_verify(tmp_path, chain, ca.root_cert_path)
        work = tmp_path / "agent"
        work.mkdir()
        async with running_agent(agent_config(ca, work)) as agent:
            socket = f"unix://{os.path.abspath(agent.agent.config.socket_path)}"
            got = await asyncio.to_thread(_use_py_spiffe, socket)
        assert got["x509"] == got["jwt"] == got["validated"] == FRONTEND
        assert got["root"] == ca.root_cert_path.read_bytes().decode().strip()
        ready = admin_json(ca, "/readyz")
        assert ready["ready"] is True, ready
    finally:
        ca.stop()
    assert "Traceback" not in ca.log()
    # No private key on disk: the data dir (CA files, JWT key file, record) and the token
    # issuer's directory aside, nothing the CA wrote holds one.
    assert private_keys_under(tmp_path / "ca") == []
    ca_files = {p.name for p in (tmp_path / "ca" / "ca").iterdir()}
    assert {"ca-cert.pem", "ca-key.uri", "root-bundle.pem"} <= ca_files
    assert "ca-key.pem" not in ca_files
    # The JWT-SVID keys were made in the token, with the same custody attributes.
    labels = [k.get("label", "") for k in softhsm.private_key_objects()]
    jwt_labels = [label for label in labels if label.startswith("bulwark-jwt-")]
    assert jwt_labels, labels
    assert key_attributes(softhsm, jwt_labels[0])["EXTRACTABLE"] is False


def _use_py_spiffe(socket: str) -> dict[str, str]:
    from cryptography.hazmat.primitives.serialization import Encoding

    x509 = X509Source(socket_path=socket, timeout_in_seconds=15)
    jwts = JwtSource(socket_path=socket, timeout_in_seconds=15)
    client = WorkloadApiClient(socket_path=socket)
    try:
        svid = x509.get_x509_context().default_svid
        bundle = x509.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        assert bundle is not None
        token = jwts.fetch_svid(audience={BACKEND})
        checked = client.validate_jwt_svid(token.token, BACKEND)
        roots = [c.public_bytes(Encoding.PEM).decode().strip() for c in bundle.x509_authorities]
        return {
            "x509": str(svid.spiffe_id),
            "jwt": str(token.spiffe_id),
            "validated": str(checked.spiffe_id),
            "root": "\n".join(roots),
        }
    finally:
        client.close()
        jwts.close()
        x509.close()


def test_key_attributes_read_back_through_pkcs11(tmp_path: Path, softhsm: SoftHsm) -> None:
    made = hsm_init(softhsm)
    attrs = key_attributes(softhsm, CA_LABEL)
    assert attrs == {
        "SENSITIVE": True,
        "EXTRACTABLE": False,
        "PRIVATE": True,
        "ALWAYS_SENSITIVE": True,
        "NEVER_EXTRACTABLE": True,
        "TOKEN": True,
        "SIGN": True,
        "VALUE_READABLE": False,
    }
    (listed,) = softhsm.private_key_objects()
    assert listed["label"] == CA_LABEL
    assert listed["id"] == made["id"]
    assert "never extractable" in listed["access"] and "sensitive" in listed["access"]
    assert listed["usage"] == "sign"
    shown = bulwark(softhsm, "ca", "hsm", "show", *softhsm.flags(CA_LABEL))
    assert "CKA_SENSITIVE=true, CKA_EXTRACTABLE=false, CKA_PRIVATE=true" in shown.stdout
    # Without the PIN the key is not even visible (CKA_PRIVATE).
    anonymous = softhsm.run(
        "pkcs11-tool", "--module", "/usr/lib/softhsm/libsofthsm2.so",
        "--token-label", softhsm.label, "--list-objects", "--type", "privkey",
    )  # fmt: skip
    assert CA_LABEL not in anonymous.stdout


def test_intermediate_csr_and_install_with_the_key_in_the_hsm(
    tmp_path: Path, softhsm: SoftHsm
) -> None:
    """The intermediate's key never leaves the token: the HSM signs the CSR, the offline root
    (openssl) signs it, install writes certificates and the key's URI, the CA serves."""
    hsm_init(softhsm, "intermediate-2026")
    flags = softhsm.flags("intermediate-2026")
    csr = tmp_path / "int.csr"
    bulwark(softhsm, "ca", "intermediate", "csr", *flags, "--out", str(csr))
    offline = tmp_path / "offline"
    offline.mkdir()
    root_key, root_cert = offline / "root.key", offline / "root.pem"
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(root_key))
    openssl(
        "req", "-x509", "-new", "-key", str(root_key), "-subj", "/O=cluster.local/CN=offline root",
        "-days", "3650", "-out", str(root_cert),
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    ext = offline / "ext.cnf"
    ext.write_text(
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    signed = tmp_path / "int.pem"
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(root_cert), "-CAkey", str(root_key),
        "-CAcreateserial", "-days", "365", "-extfile", str(ext), "-out", str(signed),
    )  # fmt: skip
    cacerts = tmp_path / "cacerts"
    bulwark(
        softhsm, "ca", "intermediate", "install", *flags, "--cert", str(signed),
        "--root", str(root_cert), "--cacerts-dir", str(cacerts),
    )  # fmt: skip
    assert sorted(p.name for p in cacerts.iterdir()) == [
        "ca-cert.pem", "ca-key.uri", "cert-chain.pem", "root-cert.pem",
    ]  # fmt: skip
    issuer = TokenIssuer(tmp_path / "issuer")
    ca = start_hsm_ca(
        tmp_path / "ca", softhsm, issuer, "--cacerts-dir", str(cacerts),
        "--jwt-keys-in-hsm", label="intermediate-2026", workers=1,
    )  # fmt: skip
    try:
        _, leaf_csr = key_and_csr(tmp_path, FRONTEND)
        chain = create_certificate(
            channel(ca.grpc_addr, ca.root_cert_path),
            leaf_csr.read_bytes(),
            token=issuer.mint("demo", "frontend"),
        )
    finally:
        ca.stop()
    assert len(chain) == 3  # leaf, intermediate, root
    assert ": OK" in _strict_verify(tmp_path, chain, root_cert)
    assert private_keys_under(cacerts) == []
    assert private_keys_under(tmp_path / "ca") == []


def test_pin_from_the_environment_reaches_every_worker(tmp_path: Path, softhsm: SoftHsm) -> None:
    """BULWARK_PKCS11_PIN instead of a PIN file: the supervisor and both workers log in."""
    from tests.support.ca_process import start_ca
    from tests.support.softhsm import MODULE

    hsm_init(softhsm)
    issuer = TokenIssuer(tmp_path / "issuer")
    flags = ["--ca-key", softhsm.uri(CA_LABEL), "--pkcs11-module", str(MODULE)]
    env = {**softhsm.env, "BULWARK_PKCS11_PIN": USER_PIN}
    ca = start_ca(tmp_path / "ca", *flags, *issuer.flags, env=env, workers=2)
    try:
        for _ in range(4):  # connections spread over both workers
            _, csr = key_and_csr(tmp_path, FRONTEND)
            chain = create_certificate(
                channel(ca.grpc_addr, ca.root_cert_path),
                csr.read_bytes(),
                token=issuer.mint("demo", "frontend"),
            )
            assert ": OK" in _strict_verify(tmp_path, chain, ca.root_cert_path)
    finally:
        ca.stop()
    assert USER_PIN not in ca.log() and "Traceback" not in ca.log()
