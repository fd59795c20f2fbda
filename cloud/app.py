"""The aggregator's HTTP API (FastAPI): the assembled cloud (`cloud.assembly`) behind one router per unit
(`cloud.api`). Errors map to one status each, with the reason in `detail` (`federation.responses.ErrorBody`).

Who may call what is `cloud.rbac.PERMISSIONS`, checked by `cloud.api.deps.require`; participants authenticate by
enrollment token and Ed25519 signatures instead. Public (no token): health, the public CKKS context, the current
round, model versions, the release key and signed releases, the log's checkpoint and consistency proofs. In front of
every route: `cloud.ratelimit.Guard` (rate limits, lockout, streaming body cap, counted failures).
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import DataError

from cloud import metrics as cloud_metrics
from cloud.api import (
    approvals,
    consent,
    custody,
    dashboard,
    drift,
    explanations,
    intrusion,
    ledgers,
    metrics,
    participants,
    promotion,
    regions,
    registry,
    rounds,
    secagg,
    users,
)
from cloud.api import log as log_api
from cloud.api.deps import DESCRIPTIONS
from cloud.assembly import Cloud, CloudSettings, assemble
from cloud.custodian import INSECURE_LABEL
from cloud.errors import CloudError
from cloud.failure_tally import FailureTally
from cloud.ratelimit import Guard
from federation import dp_accounting
from federation.responses import ErrorBody, Health
from federation.wire import RegionAggregate, RegionInputs, Submission

log = logging.getLogger(__name__)
RAW_BODIES = {"/v1/rounds/{round_id}/updates": Submission,
              "/v1/rounds/{round_id}/region-aggregates": RegionAggregate,
              "/v1/rounds/{round_id}/region-aggregates/{sha256}/inputs": RegionInputs}
ROUTERS = (custody, rounds, secagg, regions, participants, users, approvals, registry, promotion, drift, consent,
           ledgers, log_api, dashboard, metrics, explanations, intrusion)

__all__ = ["CloudSettings", "create_app"]


def _lifespan(cloud: Cloud, tick_seconds: float):  # noqa: ANN202 - FastAPI's lifespan protocol
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def ticker() -> None:
            while True:
                try:
                    await asyncio.to_thread(cloud.tick)  # the first tick resumes what a crash left behind
                    await asyncio.to_thread(app.state.failures.flush_if_due)
                except Exception:
                    log.exception("deadline tick failed")
                await asyncio.sleep(tick_seconds)

        # import the accountant (opacus, torch) now rather than inside the first submission
        warm = asyncio.create_task(asyncio.to_thread(dp_accounting.epsilon, [(1.0, 0.01, 1)], accountant="rdp"))
        task = asyncio.create_task(ticker())
        yield
        task.cancel()
        warm.cancel()
        await asyncio.to_thread(app.state.failures.flush_if_due, force=True)
        await asyncio.to_thread(cloud.close)

    return lifespan


def _openapi(app: FastAPI):  # noqa: ANN202
    def openapi() -> dict:
        """FastAPI's document, plus the bodies read raw (to bound their size before parsing: `RAW_BODIES`), and every
        refusal a route can give with the one error schema the API really answers with (`ErrorBody`): the statuses
        each router declares, 422 (schema), 400 for an unparseable body, and the front door's 413 and 429
        (`cloud.ratelimit`) on every route."""
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for path, body in RAW_BODIES.items():
                schema = body.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[body.__name__] = schema
                ref = {"$ref": f"#/components/schemas/{body.__name__}"}
                doc["paths"][path]["post"]["requestBody"] = {
                    "required": True, "content": {"application/json": {"schema": ref}}}
            error = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas["ErrorBody"] = error
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            for operations in doc["paths"].values():
                for op in operations.values():
                    responses = op.setdefault("responses", {})
                    # a body that is not UTF-8 JSON at all is malformed (400) before it can fail its schema (422)
                    for status in ("413", "422", "429") + (("400",) if "requestBody" in op else ()):
                        responses.setdefault(status, {"description": DESCRIPTIONS[int(status)]})
                    for status, resp in responses.items():
                        if status.startswith("4"):
                            resp["content"] = {"application/json": {"schema": {
                                "$ref": "#/components/schemas/ErrorBody"}}}
            app.openapi_schema = doc
        return app.openapi_schema

    return openapi


def _error_handlers(app: FastAPI) -> None:
    """Every refusal is `{"detail": ...}` (`ErrorBody`); refusals of malformed requests are counted per window by
    `cloud.ratelimit`, not audited one by one."""

    @app.exception_handler(CloudError)
    async def _cloud_error(_req: Request, exc: CloudError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.reason})

    def _invalid(errors: list) -> JSONResponse:
        detail = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in errors]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(ValidationError)
    async def _invalid_model(_req: Request, exc: ValidationError) -> JSONResponse:
        return _invalid(exc.errors(include_url=False, include_input=False))

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return _invalid(list(exc.errors()))

    @app.exception_handler(OverflowError)
    @app.exception_handler(DataError)
    async def _out_of_range(req: Request, exc: Exception) -> JSONResponse:
        # a value past what the database column holds: the request's fault, never a 500 (bounds in the routers
        # and wire schemas catch these first; this is the net under them)
        log.warning("%s %s: value out of range (%s)", req.method, req.url.path, exc.__class__.__name__)
        return JSONResponse(status_code=422, content={"detail": "a value in the request is out of range"})


def create_app(settings: CloudSettings) -> FastAPI:
    cloud = assemble(settings)
    app = FastAPI(title="wearfed aggregator", version="0.3.0", lifespan=_lifespan(cloud, settings.tick_seconds),
                  description="Federated aggregation of CKKS-encrypted, signed, DP-SGD updates. Roles and "
                              "permissions: cloud/rbac.py; see docs/cloud.md.")
    app.state.cloud = cloud
    app.state.failures = tally = FailureTally(settings.limits, cloud.store.record)
    _error_handlers(app)
    app.add_middleware(Guard, limits=settings.limits, tally=tally, audit=cloud.store.record, intrusion=cloud.intrusion)

    @app.get("/healthz", tags=["public"])
    def healthz() -> Health:
        status = cloud.keys.status()
        return Health(status="ok", custodian=status.mode or "sealed", custodian_state=status.state,
                      warning=INSECURE_LABEL if cloud.keys.insecure else None)

    for module in ROUTERS:
        app.include_router(module.router)
    cloud_metrics.install(app, cloud)  # GET /metrics and the request middleware (cloud/metrics.py)
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app
