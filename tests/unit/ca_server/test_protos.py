"""The committed generated code is what `make protos` produces from ca.proto today."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.ca_process import REPO

GENERATED = ("ca_pb2.py", "ca_pb2.pyi", "ca_pb2_grpc.py")


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    src = tmp_path / "protos" / "istio" / "v1" / "auth"
    src.mkdir(parents=True)
    shutil.copy(REPO / "protos/istio/v1/auth/ca.proto", src / "ca.proto")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I.",
            "--python_out=.",
            "--grpc_python_out=.",
            "--pyi_out=.",
            "protos/istio/v1/auth/ca.proto",
        ],
        cwd=tmp_path,
        check=True,
    )
    for name in GENERATED:
        fresh = (src / name).read_text()
        committed = (REPO / "protos/istio/v1/auth" / name).read_text()
        assert fresh == committed, (
            f"protos/istio/v1/auth/{name} is stale: run `make protos` and commit"
        )


def test_wire_names_match_istio() -> None:
    from protos.istio.v1.auth import ca_pb2

    service = ca_pb2.DESCRIPTOR.services_by_name["IstioCertificateService"]
    assert service.full_name == "istio.v1.auth.IstioCertificateService"
    assert (
        service.methods_by_name["CreateCertificate"].input_type.full_name
        == "istio.v1.auth.IstioCertificateRequest"
    )
    fields = ca_pb2.IstioCertificateRequest.DESCRIPTOR.fields_by_name
    assert (
        fields["csr"].number,
        fields["validity_duration"].number,
        fields["metadata"].number,
    ) == (1, 3, 4)
    assert ca_pb2.IstioCertificateResponse.DESCRIPTOR.fields_by_name["cert_chain"].number == 1
