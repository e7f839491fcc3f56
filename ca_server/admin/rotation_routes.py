"""The /v1/ca/rotation routes: an operator moves the CA slots (`ca_server.authority.slots.model`).

    GET  /v1/ca/rotation                      slots, bundle, what is due next
    POST /v1/ca/rotation/prepare              a new root (new key) enters the bundle
    POST /v1/ca/rotation/activate[?force=1]   the prepared CA signs; the active one retires
    POST /v1/ca/rotation/retire[?force=1]     the retired CA leaves the bundle

Every POST needs the admin token (`--admin-token-file`), even on loopback: it changes what
the whole mesh trusts. A verb that does not apply now answers 409 with the reason. With
Kubernetes leader election only the Lease holder moves slots: a POST to another replica
answers 409 naming the leader (503 while no replica holds the Lease), and changes nothing.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ca_server.admin.models import ErrorBody
from ca_server.admin.routes import UNAUTHORIZED, require_local_host
from ca_server.authority.slots.model import SlotError
from ca_server.authority.slots.rotator import SlotRotator

Clock = Callable[[], datetime]
_bearer = HTTPBearer(auto_error=False, description="contents of --admin-token-file")
RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong admin token"},
    403: {"model": ErrorBody, "description": "no admin token configured"},
    409: {
        "model": ErrorBody,
        "description": "the verb does not apply to the current slots, or another replica leads",
    },
    503: {"model": ErrorBody, "description": "no replica holds the leader Lease right now"},
}
NOT_SLOTS = HTTPException(
    status_code=409,
    detail="this CA renews its root with the same key; start it with --ca-rotation new-key "
    "to rotate through prepared/active/retired slots",
)


class Leadership(Protocol):
    """Who may move the slots: the Lease holder (`ca_server.kube.leader.LeaderElector`)."""

    @property
    def identity(self) -> str: ...

    @property
    def lease(self) -> str: ...

    def is_leader(self) -> bool: ...

    def holder(self) -> str | None: ...


def require_leader(leadership: Leadership | None) -> None:
    """Refuse a verb on a replica that does not lead: its write would race the leader's."""
    if leadership is None or leadership.is_leader():
        return
    holder = leadership.holder()
    if holder is None:
        raise HTTPException(
            status_code=503,
            detail=f"no replica holds the lease {leadership.lease} right now (this replica is "
            f"{leadership.identity}); retry in a few seconds",
        )
    raise HTTPException(
        status_code=409,
        detail=f"this replica ({leadership.identity}) does not lead; the lease "
        f"{leadership.lease} is held by {holder}: send rotation verbs to that replica",
    )


def _token_guard(
    admin_token: str | None, loopback: bool, *, always: bool
) -> Callable[[HTTPAuthorizationCredentials | None], None]:
    expected = admin_token.encode() if admin_token is not None else None

    def require(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if loopback and not always:
            return  # reading the state on loopback: as the record routes
        if expected is None:
            raise HTTPException(
                status_code=403,
                detail="rotation needs the admin token: start the CA with --admin-token-file",
            )
        presented = credentials.credentials.encode() if credentials is not None else b""
        if not hmac.compare_digest(presented, expected):
            raise UNAUTHORIZED

    return require


def build_rotation_router(
    rotator: SlotRotator | None,
    *,
    admin_token: str | None,
    loopback: bool,
    changed: Callable[[], None],
    leadership: Leadership | None = None,
    clock: Clock = lambda: datetime.now(UTC),
) -> APIRouter:
    """`changed` is called after every verb so the CA publishes the new state at once;
    `leadership` (Kubernetes) limits the verbs to the Lease holder."""
    router = APIRouter(
        prefix="/v1/ca/rotation",
        tags=["rotation"],
        dependencies=[Depends(require_local_host)],
        responses=RESPONSES,
    )
    read = Depends(_token_guard(admin_token, loopback, always=False))
    write = Depends(_token_guard(admin_token, loopback, always=True))

    def run(verb: Callable[[SlotRotator, datetime], dict[str, object]]) -> dict[str, object]:
        if rotator is None:
            raise NOT_SLOTS
        require_leader(leadership)
        try:
            result = verb(rotator, clock())
        except SlotError as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None
        changed()
        return result

    @router.get("", dependencies=[read], summary="CA slots and what is due next")
    def status() -> dict[str, object]:
        if rotator is None:
            raise NOT_SLOTS
        try:
            return rotator.status(clock())
        except SlotError as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None

    @router.post("/prepare", dependencies=[write], summary="Prepare a new root (new key)")
    def prepare() -> dict[str, object]:
        return run(lambda r, now: r.prepare(now))

    @router.post("/activate", dependencies=[write], summary="Sign with the prepared CA")
    def activate(force: bool = False) -> dict[str, object]:
        return run(lambda r, now: r.activate(now, force=force))

    @router.post("/retire", dependencies=[write], summary="Drop the retired CA from the bundle")
    def retire(force: bool = False) -> dict[str, object]:
        return run(lambda r, now: r.retire(now, force=force))

    return router


__all__ = ["build_rotation_router"]
