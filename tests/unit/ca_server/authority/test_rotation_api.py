"""The /v1/ca/rotation routes as a table: who may call them, and what each refusal says.
Nothing changes on a refused call (the stored state is compared before and after)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from ca_server.admin.rotation_routes import build_rotation_router
from ca_server.authority.material import DirectoryKeyStore, load_or_create
from ca_server.authority.slots.model import SlotPolicy
from ca_server.authority.slots.rotator import SlotRotator
from ca_server.authority.slots.store import STATE_NAME, DirectorySlotStore
from certs.spiffe_id import TrustDomain

TD = TrustDomain("cluster.local")
TOKEN = "s3cret-admin-token"
GOOD = {"Authorization": f"Bearer {TOKEN}"}
BAD = {"Authorization": "Bearer nope"}


def _client(
    tmp_path: Path, *, token: str | None = TOKEN, loopback: bool = True, slots: bool = True
) -> tuple[TestClient, list[int]]:
    now = datetime.now(UTC)
    rotator = SlotRotator(
        store=DirectorySlotStore(tmp_path / "ca"),
        policy=SlotPolicy(propagation_delay=timedelta(hours=1)),
        trust_domain=TD,
        self_signed=True,
    )
    rotator.step(load_or_create(DirectoryKeyStore(tmp_path / "ca"), TD, now), now, may_act=True)
    nudged: list[int] = []
    app = FastAPI()
    app.include_router(
        build_rotation_router(
            rotator if slots else None,
            admin_token=token,
            loopback=loopback,
            changed=lambda: nudged.append(1),
        )
    )
    return TestClient(app), nudged


@pytest.mark.parametrize(
    ("case", "kw", "method", "path", "headers", "code", "detail"),
    [
        ("prepare without a token", {}, "post", "/prepare", {}, 401, "admin bearer token"),
        ("prepare with a wrong token", {}, "post", "/prepare", BAD, 401, "admin bearer token"),
        ("prepare on a CA with no token file", {"token": None}, "post", "/prepare", {}, 403, "--admin-token-file"),
        ("status off loopback without a token", {"loopback": False}, "get", "", {}, 401, "admin bearer token"),
        ("activate with nothing prepared", {}, "post", "/activate", GOOD, 409, "no CA is prepared"),
        ("retire with nothing retired", {}, "post", "/retire", GOOD, 409, "no CA is retired"),
        ("same-key CA", {"slots": False}, "post", "/prepare", GOOD, 409, "--ca-rotation new-key"),
        ("same-key CA status", {"slots": False}, "get", "", GOOD, 409, "--ca-rotation new-key"),
    ],
)  # fmt: skip
def test_refusals(
    tmp_path: Path,
    case: str,
    kw: dict[str, object],
    method: str,
    path: str,
    headers: dict[str, str],
    code: int,
    detail: str,
) -> None:
    client, nudged = _client(tmp_path, **kw)  # type: ignore[arg-type]
    before = (tmp_path / "ca" / STATE_NAME).read_bytes()
    response = getattr(client, method)(f"/v1/ca/rotation{path}", headers=headers)
    assert response.status_code == code, (case, response.text)
    assert detail in response.json()["detail"], case
    assert (tmp_path / "ca" / STATE_NAME).read_bytes() == before, "nothing changed"
    assert nudged == []
    assert TOKEN not in response.text


def test_prepare_then_early_activation_is_refused_and_force_works(tmp_path: Path) -> None:
    client, nudged = _client(tmp_path)
    status = client.get("/v1/ca/rotation").json()
    assert status["prepared"] is None and status["due"] == "none"
    prepared = client.post("/v1/ca/rotation/prepare", headers=GOOD)
    assert prepared.status_code == 200 and nudged == [1]
    new_id = prepared.json()["prepared"]["id"]
    assert len(prepared.json()["bundle"]) == 2
    early = client.post("/v1/ca/rotation/activate", headers=GOOD)
    assert early.status_code == 409 and "propagation delay" in early.json()["detail"]
    forced = client.post("/v1/ca/rotation/activate?force=true", headers=GOOD)
    assert forced.status_code == 200 and forced.json()["active"]["id"] == new_id
    assert forced.json()["retired"] is not None
    assert client.post("/v1/ca/rotation/retire", headers=GOOD).status_code == 409
    dropped = client.post("/v1/ca/rotation/retire?force=true", headers=GOOD)
    assert dropped.status_code == 200 and len(dropped.json()["bundle"]) == 1
    assert "PRIVATE KEY" not in dropped.text
