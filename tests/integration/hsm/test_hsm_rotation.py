"""New-key rotation with the keys in a real SoftHSM2 token: `prepare` makes the next root's key
inside the token (label `<ca-key label>-<UTC stamp>`, same custody attributes), `activate`
signs with it, `retire` drops the old root from the bundle; at every step the data dir holds
certificates and key URIs only, and a restart finds the active key by its stored URI."""

from __future__ import annotations

from pathlib import Path

from certs.pem import load_certificates, to_pem
from tests.support.ca_client import channel, create_certificate
from tests.support.hsm_ca import (
    CA_LABEL,
    TokenIssuer,
    admin_json,
    hsm_init,
    key_attributes,
    private_keys_under,
    start_hsm_ca,
)
from tests.support.openssl import key_and_csr, openssl
from tests.support.softhsm import SoftHsm

ADMIN_TOKEN = "hsm-rotation-admin"
FRONTEND = "spiffe://cluster.local/ns/demo/sa/frontend"


def test_prepare_activate_retire_with_keys_made_in_the_hsm(
    tmp_path: Path, softhsm: SoftHsm
) -> None:
    hsm_init(softhsm)
    token_file = tmp_path / "admin-token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    token_file.chmod(0o600)
    issuer = TokenIssuer(tmp_path / "issuer")
    ca = start_hsm_ca(
        tmp_path / "ca", softhsm, issuer,
        "--ca-rotation", "new-key", "--ca-propagation-delay", "1h",
        "--material-check-interval", "0.2s", "--admin-token-file", str(token_file),
        "--jwt-keys-in-hsm", workers=1,
    )  # fmt: skip

    def verb(name: str) -> dict[str, object]:
        path = f"/v1/ca/rotation/{name}" + ("?force=true" if name != "prepare" else "")
        result: dict[str, object] = admin_json(ca, path, method="POST", token=ADMIN_TOKEN)
        return result

    def issue() -> list[str]:
        _, csr = key_and_csr(tmp_path, FRONTEND)
        return create_certificate(
            channel(ca.grpc_addr, ca.root_cert_path),
            csr.read_bytes(),
            token=issuer.mint("demo", "frontend"),
        )

    try:
        first_root = load_certificates(ca.root_cert_path.read_bytes())[0]
        prepared = verb("prepare")["prepared"]
        assert isinstance(prepared, dict)
        labels = sorted(k["label"] for k in softhsm.private_key_objects())
        made = [label for label in labels if label.startswith(f"{CA_LABEL}-")]
        assert len(made) == 1, labels  # the next root's key, made inside the token
        attrs = key_attributes(softhsm, made[0])
        assert (attrs["SENSITIVE"], attrs["EXTRACTABLE"], attrs["PRIVATE"]) == (True, False, True)
        assert private_keys_under(tmp_path / "ca") == []

        verb("activate")
        location = admin_json(ca, "/v1/ca")["signing_key"]
        assert location["object"] == made[0]
        chain = issue()
        both = load_certificates(ca.root_cert_path.read_bytes())
        assert first_root in both and len(both) == 2  # the retired root stays trusted
        new_only = tmp_path / "new-root.pem"
        new_only.write_text("".join(to_pem(r) for r in both if r != first_root))
        leaf = tmp_path / "leaf.pem"
        leaf.write_text(chain[0])  # signed by the new root's key, in the HSM
        assert ": OK" in openssl("verify", "-x509_strict", "-CAfile", str(new_only), str(leaf))

        state = verb("retire")
        assert state["retired"] is None
        ca.restart()  # the active key is found again by the URI the slots store
        assert admin_json(ca, "/v1/ca")["signing_key"]["object"] == made[0]
        roots = load_certificates(ca.root_cert_path.read_bytes())
        assert first_root not in roots and len(roots) == 1
        leaf.write_text(issue()[0])
        assert ": OK" in openssl(
            "verify", "-x509_strict", "-CAfile", str(ca.root_cert_path), str(leaf)
        )
    finally:
        ca.stop()
    assert "Traceback" not in ca.log()
    assert private_keys_under(tmp_path / "ca") == []
    stored = sorted(p.name for p in (tmp_path / "ca" / "ca").iterdir() if "-key" in p.name)
    assert stored and all(name.endswith(".uri") for name in stored), stored
