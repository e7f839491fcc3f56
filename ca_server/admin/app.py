"""The admin HTTP app on the admin port: `/metrics`, `/healthz`, `/readyz` (and the /v1 API).

Every route, on a connection to a loopback address, answers only a loopback Host
(DNS rebinding protection, `routes.require_local_host`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from fastapi import APIRouter, Depends, FastAPI, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from ca_server.admin.routes import require_local_host
from ca_server.authority.material import CaMaterial
from ca_server.metrics import exposition

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def create_admin_app(
    *,
    metrics_dir: str,
    material: Callable[[], CaMaterial | None],
    readiness: Callable[[], tuple[bool, str]],
    routers: Sequence[APIRouter] = (),
    extra_metrics: Callable[[], str] = lambda: "",
) -> FastAPI:
    app = FastAPI(
        title="Bulwark CA admin API",
        version="1",
        description="Metrics, health and the issuance record of a Bulwark certificate authority.",
        # Swagger UI and ReDoc load their scripts from a CDN, which an air-gapped cluster cannot
        # reach: no half-working pages. The schema stays at /openapi.json for any local viewer.
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(require_local_host)],
    )

    @app.get(
        "/healthz", response_class=PlainTextResponse, summary="Liveness: the process serves HTTP"
    )
    def healthz() -> str:
        return "ok\n"

    @app.get("/readyz", summary="Readiness: every CA worker is serving gRPC")
    def readyz() -> Response:
        ready, detail = readiness()
        return JSONResponse({"ready": ready, "detail": detail}, status_code=200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics (citadel_server_*)")
    def metrics() -> Response:
        text = exposition(metrics_dir, material(), time.time()) + extra_metrics().encode()
        return Response(text, media_type=PROMETHEUS_TEXT)

    for router in routers:
        app.include_router(router)
    return app
