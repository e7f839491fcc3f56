"""go-spiffe v2 against a CA whose keys live in a real SoftHSM2 token (issue 24): its
X509Source verifies the SVID (`x509svid.Verify`) and its JWTSource fetches and validates a
JWT-SVID signed by a JWT key made in the token. `make test-interop` runs it (the go-spiffe
check is a Go build, cached like the rest of the suite)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.support.agent import agent_config, running_agent, short_dir
from tests.support.gobuild import built_binaries
from tests.support.hsm_ca import TokenIssuer, hsm_init, private_keys_under, start_hsm_ca
from tests.support.softhsm import SoftHsm, softhsm  # noqa: F401  (a fixture, used by name)

HERE = Path(__file__).resolve().parent
FRONTEND = "spiffe://cluster.local/ns/demo/sa/frontend"
BACKEND = "spiffe://cluster.local/ns/demo/sa/backend"


async def _check(binary: Path, socket: Path, *args: str) -> dict[str, object]:
    proc = await asyncio.create_subprocess_exec(
        str(binary), args[0], "-socket", str(socket.resolve()), *args[1:],
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 40)
    assert proc.returncode == 0, err.decode()
    result: dict[str, object] = json.loads(out.decode())
    return result


async def test_go_spiffe_accepts_what_the_hsm_ca_issues(
    tmp_path: Path,
    softhsm: SoftHsm,  # noqa: F811
) -> None:
    binary = (
        built_binaries(
            HERE / "build-gospiffe.sh", ("gospiffe-check",), env_var="BULWARK_GOSPIFFE_BIN"
        )
        / "gospiffe-check"
    )
    hsm_init(softhsm)
    issuer = TokenIssuer(tmp_path / "issuer")
    ca = start_hsm_ca(tmp_path / "ca", softhsm, issuer, "--jwt-keys-in-hsm", workers=1)
    try:
        with short_dir() as work:
            config = agent_config(ca, work, socket_path=work / "sock")
            async with running_agent(config) as agent:
                socket = agent.agent.config.socket_path
                x509 = await _check(binary, socket, "x509")
                assert x509["spiffe_id"] == FRONTEND
                jwt = await _check(binary, socket, "jwt", "-audience", BACKEND)
                assert jwt["spiffe_id"] == FRONTEND
                checked = await _check(
                    binary, socket, "validate", "-audience", BACKEND, "-token", str(jwt["token"])
                )
                assert checked == {"local": FRONTEND, "agent": FRONTEND}
    finally:
        ca.stop()
    assert private_keys_under(tmp_path / "ca") == []
