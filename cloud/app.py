"""The aggregator's HTTP API (FastAPI). Errors map to one status each, with the reason in `detail`."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from cloud.custodian import INSECURE_LABEL, Custodian
from cloud.db import make_engine, make_sessionmaker
from cloud.errors import CloudError, TooLarge, Unauthorized
from cloud.service import Federation
from federation.wire import MAX_UPDATE_BYTES, Enrollment, OpenRound, Refusal, Submission

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CloudSettings:
    db_url: str
    state_dir: Path
    admin_token: str
    enroll_token: str
    dev_insecure_custodian: bool = False
    model_seed: int = 0
    tick_seconds: float = 0.5


def create_app(settings: CloudSettings) -> FastAPI:
    if not settings.dev_insecure_custodian:
        raise NotImplementedError("sealed key custody is not built yet: run with the insecure dev custodian")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    custodian = Custodian.dev_unsealed(settings.state_dir)
    fed = Federation(make_sessionmaker(make_engine(settings.db_url)), custodian,
                     enroll_token=settings.enroll_token, model_seed=settings.model_seed)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async def ticker() -> None:
            while True:
                await asyncio.sleep(settings.tick_seconds)
                try:
                    await asyncio.to_thread(fed.tick)
                except Exception:
                    log.exception("deadline tick failed")

        task = asyncio.create_task(ticker())
        yield
        task.cancel()

    app = FastAPI(title="wearfed aggregator", version="0.1.0", lifespan=lifespan)
    app.state.federation = fed

    @app.exception_handler(CloudError)
    async def _cloud_error(_req: Request, exc: CloudError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.reason})

    @app.exception_handler(ValidationError)
    async def _invalid(_req: Request, exc: ValidationError) -> JSONResponse:
        errors = [{"loc": e["loc"], "msg": e["msg"]} for e in exc.errors(include_url=False, include_input=False)]
        return JSONResponse(status_code=422, content={"detail": errors})

    @app.middleware("http")
    async def _limit_body(request: Request, call_next):  # noqa: ANN001, ANN202
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_UPDATE_BYTES:
            exc = TooLarge(f"body of {length} bytes exceeds {MAX_UPDATE_BYTES}")
            return JSONResponse(status_code=exc.status, content={"detail": exc.reason})
        return await call_next(request)

    def admin(authorization: str = Header(default="")) -> str:
        token = authorization.removeprefix("Bearer ").strip()
        if not token or not hmac.compare_digest(token.encode(), settings.admin_token.encode()):
            raise Unauthorized("an admin bearer token is required")
        return "admin"

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "custodian": custodian.mode,
                "warning": INSECURE_LABEL if custodian.mode.startswith("insecure") else None}

    @app.get("/v1/context", response_class=Response)
    def public_context() -> Response:
        return Response(custodian.public_context_bytes, media_type="application/octet-stream")

    @app.post("/v1/participants", status_code=201)
    def enroll(req: Enrollment) -> dict:
        return fed.enroll(req)

    @app.get("/v1/participants")
    def participants(_: str = Depends(admin)) -> list[dict]:
        return fed.participants()

    @app.post("/v1/rounds", status_code=201)
    def open_round(req: OpenRound, actor: str = Depends(admin)) -> dict:
        return fed.open_round(req, actor=actor)

    @app.get("/v1/rounds/current")
    def current_round() -> dict:
        return fed.current_round()

    @app.get("/v1/rounds/{round_id}")
    def round_report(round_id: int, _: str = Depends(admin)) -> dict:
        return fed.round_report(round_id)

    @app.post("/v1/rounds/{round_id}/updates")
    async def submit(round_id: int, request: Request) -> dict:
        body = await request.body()
        if len(body) > MAX_UPDATE_BYTES:
            raise TooLarge(f"body of {len(body)} bytes exceeds {MAX_UPDATE_BYTES}")
        sub = Submission.model_validate_json(body)
        return await asyncio.to_thread(fed.submit, round_id, sub, body_bytes=len(body))

    @app.post("/v1/rounds/{round_id}/refusals")
    def refuse(round_id: int, msg: Refusal) -> dict:
        return fed.refuse(round_id, msg)

    @app.get("/v1/models/latest")
    def latest_model() -> dict:
        return fed.get_model(None)

    @app.get("/v1/models/{version}")
    def model_version(version: int) -> dict:
        return fed.get_model(version)

    return app
