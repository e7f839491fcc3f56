"""Multi-primary (docs/MULTICLUSTER.md): two CAs, one per cluster, each signing with its own
intermediate under one shared offline root, made the documented way (`bulwark ca intermediate
csr`, the root signs with openssl, `bulwark ca intermediate install`, `ca serve --cacerts-dir`).

A workload of "cluster A" and one of "cluster B", each with its own agent on its own CA, serve
real Envoys that complete mTLS with each other, each admitting exactly the other's SPIFFE ID
and trusting only the shared root; a third workload of A, not admitted, is refused.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from certs.cli import main as bulwark
from certs.errors import CertsError
from certs.pem import load_certificates
from certs.spiffe_id import SpiffeId
from certs.verify import verify_svid
from tests.support.agent import short_dir
from tests.support.ca_process import RunningCa, start_ca
from tests.support.envoy import EnvoyProcess, http_get, uri_sans
from tests.support.mesh import Mesh, spiffe_id
from tests.support.openssl import openssl, self_signed_ca

pytestmark = pytest.mark.slow  # two CAs, three agents and three Envoys start once per module
INTERMEDIATE_EXT = (
    "basicConstraints=critical,CA:true,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n"
    "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n"
)


def intermediate(base: Path, cluster: str) -> Path:
    """Cluster `cluster`'s intermediate, signed by the offline root in `base`: its cacerts dir."""
    keys, csr, cert = base / cluster / "keys", base / cluster / "ca.csr", base / cluster / "ca.pem"
    (base / cluster).mkdir()
    csr_args = ["--key-dir", str(keys), "--trust-domain", "cluster.local", "--out", str(csr)]
    csr_args += ["--cluster-id", f"cluster-{cluster}"]
    assert bulwark(["ca", "intermediate", "csr", *csr_args]) == 0
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(base / "root-cert.pem"),
        "-CAkey", str(base / "root-key.pem"), "-CAcreateserial", "-days", "365",
        "-extfile", str(base / "ca.ext"), "-out", str(cert),
    )  # fmt: skip
    cacerts = base / cluster / "cacerts"
    install_args = ["--key-dir", str(keys), "--cert", str(cert)]
    install_args += ["--root", str(base / "root-cert.pem"), "--cacerts-dir", str(cacerts)]
    assert bulwark(["ca", "intermediate", "install", *install_args]) == 0
    return cacerts


@dataclass
class Primaries:
    a: RunningCa
    b: RunningCa
    root: x509.Certificate
    server: EnvoyProcess  # B's backend, admitting A's frontend
    client: EnvoyProcess  # A's frontend, expecting B's backend
    intruder: EnvoyProcess  # A's intruder, expecting B's backend too


@pytest.fixture(scope="module")
def primaries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Primaries]:
    base = tmp_path_factory.mktemp("primaries")
    (base / "ca.ext").write_text(INTERMEDIATE_EXT)
    self_signed_ca(base / "root-key.pem", "/O=cluster.local/CN=Mesh Root CA",
                   out=base / "root-cert.pem")  # fmt: skip
    with short_dir() as work, ExitStack() as stack:
        cas = {}
        for cluster in ("a", "b"):
            cacerts = intermediate(base, cluster)
            cas[cluster] = start_ca(base / f"ca-{cluster}", "--cacerts-dir", str(cacerts))
            stack.callback(cas[cluster].stop)
        mesh_a, mesh_b = Mesh(cas["a"], work, stack), Mesh(cas["b"], work, stack)
        mesh_a.agent("frontend")
        mesh_a.agent("intruder")
        mesh_b.agent("backend")
        server = mesh_b.server("backend", client="frontend")
        yield Primaries(
            a=cas["a"],
            b=cas["b"],
            root=load_certificates((base / "root-cert.pem").read_bytes())[0],
            server=server,
            client=mesh_a.client("frontend", server=server, server_sa="backend"),
            intruder=mesh_a.client("intruder", server=server, server_sa="backend"),
        )


def test_both_cas_publish_the_one_root_and_sign_with_their_own_intermediates(
    primaries: Primaries,
) -> None:
    for ca in (primaries.a, primaries.b):
        assert load_certificates(ca.root_cert_path.read_bytes()) == [primaries.root]
    infos = [ca_info(ca) for ca in (primaries.a, primaries.b)]
    assert [r["sha256"] for r in infos[0]["roots"]] == [r["sha256"] for r in infos[1]["roots"]]
    [a_intermediate], [b_intermediate] = (i["intermediates"] for i in infos)
    assert a_intermediate["sha256"] != b_intermediate["sha256"]
    assert a_intermediate["subject"].startswith(
        "CN=Bulwark intermediate CA cluster.local cluster-a"
    )
    assert b_intermediate["subject"].startswith(
        "CN=Bulwark intermediate CA cluster.local cluster-b"
    )


def ca_info(ca: RunningCa) -> dict[str, list[dict[str, str]]]:
    with urllib.request.urlopen(f"{ca.admin_url}/v1/ca", timeout=5) as resp:
        info: dict[str, list[dict[str, str]]] = json.load(resp)
    return info


def test_workloads_of_two_clusters_complete_mtls_with_exact_ids(primaries: Primaries) -> None:
    status, body = http_get(primaries.client.port, "/across", timeout=10)
    assert status == 200, (body, primaries.client.log()[-3000:], primaries.server.log()[-3000:])
    seen = json.loads(body)
    assert f"URI={spiffe_id('frontend')}" in seen["xfcc"], seen
    assert uri_sans(primaries.server.served_certificate()) == [spiffe_id("backend")]
    assert uri_sans(primaries.client.served_certificate()) == [spiffe_id("frontend")]
    for envoy in (primaries.server, primaries.client):  # each trusts the shared root only
        [root] = envoy.trusted_roots()
        assert int(root["serial_number"], 16) == primaries.root.serial_number
    # each side's leaf was issued by its own cluster's intermediate, under the one root
    now = datetime.now(UTC)
    leaves = {}
    for envoy, ca, name in (
        (primaries.server, primaries.b, "backend"),
        (primaries.client, primaries.a, "frontend"),
    ):
        leaves[name] = leaf = recorded_leaf(ca, envoy.served_certificate()["serial_number"])
        assert verify_svid([leaf, intermediate_of(ca)], [primaries.root], now=now) == (
            SpiffeId.parse(spiffe_id(name))
        )
    with pytest.raises(CertsError):  # A's leaf does not chain through B's intermediate
        verify_svid([leaves["frontend"], intermediate_of(primaries.b)], [primaries.root], now=now)
    stats = primaries.server.stats()
    assert stats["listener.inbound.ssl.fail_verify_error"] == 0
    assert stats["listener.inbound.ssl.fail_verify_san"] == 0


def recorded_leaf(ca: RunningCa, serial: str) -> x509.Certificate:
    """A leaf as `ca`'s issuance record holds it."""
    wanted = serial.lower().lstrip("0")
    with urllib.request.urlopen(f"{ca.admin_url}/v1/certificates/{wanted}", timeout=5) as resp:
        return load_certificates(json.load(resp)["certificate_pem"].encode())[0]


def intermediate_of(ca: RunningCa) -> x509.Certificate:
    """The intermediate `ca` signs with (`/v1/ca`)."""
    [info] = ca_info(ca)["intermediates"]
    return load_certificates(info["pem"].encode())[0]


def test_a_workload_the_server_does_not_admit_is_refused(primaries: Primaries) -> None:
    before = primaries.server.stats()["listener.inbound.ssl.fail_verify_san"]
    status, _ = http_get(primaries.intruder.port, "/across", timeout=10)
    assert status != 200
    assert primaries.server.stats()["listener.inbound.ssl.fail_verify_san"] > before
