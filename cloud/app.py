"""The aggregator's HTTP API (FastAPI). Errors map to one status each, with the reason in `detail`.

Who may call what is `cloud.rbac.PERMISSIONS`, checked by the `require(action)` dependency; participants
authenticate by enrollment token and Ed25519 signatures instead. Public (no token): health, the public
CKKS context, the current round, model versions, the release key and signed releases.
"""


import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from cloud import custody, releases
from cloud.audit import AuditLog
from cloud.custodian import INSECURE_LABEL, Custodian
from cloud.db import make_engine, make_sessionmaker
from cloud.drift import DEFAULT_MIN_READINGS, DEFAULT_MIN_REFERENCE_HOURS, DEFAULT_THRESHOLD, DriftConfig
from cloud.errors import BadRequest, CloudError, TooLarge
from cloud.gates import load_gates
from cloud.governance import ValidationSet
from cloud.model_card import to_markdown
from cloud.service import Federation, FederationConfig, Principal
from federation import dp_accounting
from federation.drift import DriftReport
from federation.evaluation import EvaluationReport
from federation.signing import load_or_create_key
from federation.wire import (
    MAX_UPDATE_BYTES,
    CreateUser,
    Decision,
    Enrollment,
    EpsilonCap,
    EvaluationMetrics,
    IssueEnrollmentToken,
    OpenRound,
    Refusal,
    Submission,
    UnsealShare,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CloudSettings:
    db_url: str
    state_dir: Path
    admin_token: str | None = None  # bootstraps the user "admin" on first start (WEARFED_ADMIN_TOKEN)
    dev_insecure_custodian: bool = False
    model_seed: int = 0
    tick_seconds: float = 0.5
    epsilon_cap: float | None = None
    rmse_tolerance: float | None = None  # overrides the gates file's [accuracy] rmse30_max_regression
    gates_file: Path | None = None  # promotion gates TOML (cloud/gates.py); None: cloud/gates.default.toml
    validation_file: Path | None = None  # synthetic validation set (.npz, federation/evaluation.py)
    drift_threshold: float = DEFAULT_THRESHOLD  # KL nats (cloud/drift.py)
    drift_min_readings: int = DEFAULT_MIN_READINGS
    drift_min_reference_hours: float = DEFAULT_MIN_REFERENCE_HOURS
    warm_exporter: bool = False  # import litert-torch in the export child at start-up (`cloud serve` does)


def build_federation(settings: CloudSettings) -> Federation:
    gates = load_gates(settings.gates_file)
    if settings.rmse_tolerance is not None:
        gates = dataclasses.replace(gates, rmse30_max_regression=settings.rmse_tolerance)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    if settings.dev_insecure_custodian:
        custodian, sealed = Custodian.dev_unsealed(settings.state_dir), None
        public = custodian.public_context_bytes
    else:
        custodian, sealed = None, custody.load_sealed(settings.state_dir)
        public = custody.load_public(settings.state_dir)
    fed = Federation(make_sessionmaker(make_engine(settings.db_url)), public_context_bytes=public,
                     audit=AuditLog.from_state_dir(settings.state_dir),
                     release_key=load_or_create_key(settings.state_dir / "release-key.pem"),
                     custodian=custodian, sealed=sealed, model_seed=settings.model_seed,
                     config=FederationConfig(epsilon_cap=settings.epsilon_cap, gates=gates,
                                             drift=DriftConfig(
                                                 threshold=settings.drift_threshold,
                                                 min_readings=settings.drift_min_readings,
                                                 min_reference_hours=settings.drift_min_reference_hours)),
                     validation=ValidationSet.load(settings.validation_file) if settings.validation_file else None)
    fed.bootstrap_admin(settings.admin_token)
    return fed


def create_app(settings: CloudSettings) -> FastAPI:
    fed = build_federation(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async def ticker() -> None:
            while True:
                try:
                    await asyncio.to_thread(fed.tick)  # the first tick resumes what a crash left behind
                except Exception:
                    log.exception("deadline tick failed")
                await asyncio.sleep(settings.tick_seconds)

        # import the accountant (opacus, torch) now rather than inside the first submission
        warm = asyncio.create_task(asyncio.to_thread(dp_accounting.epsilon, [(1.0, 0.01, 1)], accountant="rdp"))
        task = asyncio.create_task(ticker())
        yield
        task.cancel()
        warm.cancel()
        _app.state.releases.close()

    app = FastAPI(title="wearfed aggregator", version="0.2.0", lifespan=lifespan,
                  description="Federated aggregation of CKKS-encrypted, signed, DP-SGD updates. Roles and "
                              "permissions: cloud/rbac.py; see docs/cloud.md.")
    app.state.federation = fed
    # signed TFLite artifacts for devices (cloud/releases.py)
    releases.mount(app, fed, settings.state_dir, warm=settings.warm_exporter)

    def openapi() -> dict:
        """FastAPI's document, plus the submission body (read raw, to bound its size before parsing)."""
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            sub = Submission.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(sub.pop("$defs", {}))
            schemas["Submission"] = sub
            ref = {"$ref": "#/components/schemas/Submission"}
            doc["paths"]["/v1/rounds/{round_id}/updates"]["post"]["requestBody"] = {
                "required": True, "content": {"application/json": {"schema": ref}}}
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(CloudError)
    async def _cloud_error(_req: Request, exc: CloudError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.reason})

    async def _invalid(req: Request, errors: list) -> JSONResponse:
        detail = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in errors]
        await asyncio.to_thread(fed.record, "request.invalid", "anonymous", path=req.url.path, status=422,
                                errors=[f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in detail][:5])
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(ValidationError)
    async def _invalid_model(req: Request, exc: ValidationError) -> JSONResponse:
        return await _invalid(req, exc.errors(include_url=False, include_input=False))

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(req: Request, exc: RequestValidationError) -> JSONResponse:
        return await _invalid(req, list(exc.errors()))

    @app.middleware("http")
    async def _limit_body(request: Request, call_next):  # noqa: ANN001, ANN202
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_UPDATE_BYTES:
            exc = TooLarge(f"body of {length} bytes exceeds {MAX_UPDATE_BYTES}")
            await asyncio.to_thread(fed.record, "request.too_large", "anonymous", path=request.url.path,
                                    status=413, bytes=int(length), limit=MAX_UPDATE_BYTES)
            return JSONResponse(status_code=exc.status, content={"detail": exc.reason})
        return await call_next(request)

    def require(action: str) -> Callable[..., Principal]:
        def dependency(request: Request, authorization: str = Header(default="")) -> Principal:
            return fed.authorize(authorization, action, path=request.url.path)

        dependency.__name__ = f"require_{action.replace('.', '_')}"
        return dependency

    # -- public ----------------------------------------------------------------------------------
    @app.get("/healthz", tags=["public"])
    def healthz() -> dict:
        status = fed.custodian_status()
        insecure = fed.custodian is not None and fed.custodian.insecure
        return {"status": "ok", "custodian": status.get("mode", "sealed"), "custodian_state": status["state"],
                "warning": INSECURE_LABEL if insecure else None}

    @app.get("/v1/context", response_class=Response, tags=["public"])
    def public_context() -> Response:
        return Response(fed.public_context_bytes, media_type="application/octet-stream")

    @app.get("/v1/rounds/current", tags=["public"])
    def current_round() -> dict:
        return fed.current_round()

    @app.get("/v1/models/latest", tags=["public"])
    def latest_model() -> dict:
        return fed.get_model(None)

    @app.get("/v1/models/promoted", tags=["public"])
    def promoted_model() -> dict:
        return fed.get_model(fed.promoted_version())

    @app.get("/v1/models/{version}", tags=["public"])
    def model_version(version: int) -> dict:
        return fed.get_model(version)

    @app.get("/v1/release-key", tags=["public"])
    def release_key() -> dict:
        return {"public_key": fed.release_public_key(), "algorithm": "Ed25519"}

    @app.get("/v1/releases/current", tags=["public"])
    def current_release() -> dict:
        return fed.release(fed.promoted_version())

    @app.get("/v1/models/{version}/release", tags=["public"])
    def model_release(version: int) -> dict:
        return fed.release(version)

    # -- participants (enrollment token, Ed25519 signatures) ----------------------------------------
    @app.post("/v1/participants", status_code=201, tags=["participants"])
    def enroll(req: Enrollment) -> dict:
        return fed.enroll(req)

    @app.post("/v1/rounds/{round_id}/updates", tags=["participants"])
    async def submit(round_id: int, request: Request) -> dict:
        body = await request.body()
        if len(body) > MAX_UPDATE_BYTES:
            await asyncio.to_thread(fed.record, "request.too_large", "anonymous", path=request.url.path,
                                    status=413, bytes=len(body), limit=MAX_UPDATE_BYTES)
            raise TooLarge(f"body of {len(body)} bytes exceeds {MAX_UPDATE_BYTES}")
        sub = Submission.model_validate_json(body)
        return await asyncio.to_thread(fed.submit, round_id, sub, body_bytes=len(body))

    @app.post("/v1/rounds/{round_id}/refusals", tags=["participants"])
    def refuse(round_id: int, msg: Refusal) -> dict:
        return fed.refuse(round_id, msg)

    # -- administration --------------------------------------------------------------------------
    @app.get("/v1/whoami", tags=["users"])
    def whoami(p: Annotated[Principal, Depends(require("whoami"))]) -> dict:
        return {"name": p.name, "role": p.role}

    @app.post("/v1/users", status_code=201, tags=["users"])
    def create_user(req: CreateUser, p: Annotated[Principal, Depends(require("user.create"))]) -> dict:
        return fed.create_user(p.name, req.name, req.role)

    @app.get("/v1/users", tags=["users"])
    def users(_: Annotated[Principal, Depends(require("user.list"))]) -> list[dict]:
        return fed.users()

    @app.post("/v1/enrollment-tokens", status_code=201, tags=["participants"])
    def issue_token(req: IssueEnrollmentToken,
                    p: Annotated[Principal, Depends(require("enrollment_token.issue"))]) -> dict:
        return fed.issue_enrollment_token(p.name, participant_id=req.participant_id, kind=req.kind, ttl_s=req.ttl_s)

    @app.get("/v1/participants", tags=["participants"])
    def participants(_: Annotated[Principal, Depends(require("participant.list"))]) -> list[dict]:
        return fed.participants()

    @app.put("/v1/participants/{pid}/epsilon-cap", tags=["privacy"])
    def set_cap(pid: str, req: EpsilonCap, p: Annotated[Principal, Depends(require("participant.configure"))]) -> dict:
        return fed.set_epsilon_cap(p.name, pid, req.epsilon_cap)

    # -- rounds and the registry -------------------------------------------------------------------
    @app.post("/v1/rounds", status_code=201, tags=["rounds"])
    def open_round(req: OpenRound, p: Annotated[Principal, Depends(require("round.open"))]) -> dict:
        return fed.open_round(req, actor=p.name)

    @app.get("/v1/rounds/{round_id}", tags=["rounds"])
    def round_report(round_id: int, _: Annotated[Principal, Depends(require("round.read"))]) -> dict:
        return fed.round_report(round_id)

    @app.post("/v1/rounds/{round_id}/metrics", tags=["rounds"])
    def post_metrics(round_id: int, req: EvaluationMetrics,
                     p: Annotated[Principal, Depends(require("round.evaluate"))]) -> dict:
        return fed.record_metrics(p.name, round_id, req.metrics)

    @app.post("/v1/rounds/{round_id}/approve", tags=["rounds"])
    def approve(round_id: int, p: Annotated[Principal, Depends(require("round.approve"))]) -> dict:
        return fed.approve(p.name, round_id)

    @app.post("/v1/rounds/{round_id}/reject", tags=["rounds"])
    def reject(round_id: int, req: Decision, p: Annotated[Principal, Depends(require("round.reject"))]) -> dict:
        return fed.reject(p.name, round_id, req.reason)

    @app.post("/v1/rounds/{round_id}/promote", tags=["rounds"])
    def promote(round_id: int, p: Annotated[Principal, Depends(require("model.promote"))]) -> dict:
        return fed.promote(p.name, round_id)

    @app.post("/v1/models/rollback", tags=["rounds"])
    def rollback(req: Decision, p: Annotated[Principal, Depends(require("model.rollback"))]) -> dict:
        return fed.rollback(p.name, req.reason)

    # -- governance: evaluations, gates, model cards, drift (cloud/governance.py) --------------------
    @app.get("/v1/models", tags=["governance"])
    def list_models(_: Annotated[Principal, Depends(require("round.read"))]) -> list[dict]:
        return fed.models()

    @app.get("/v1/models/{version}/card", tags=["governance"])
    def model_card(version: int, _: Annotated[Principal, Depends(require("round.read"))],
                   format: str = "json") -> Response:  # noqa: A002 - the query parameter's public name
        if format not in ("json", "md"):
            raise BadRequest(f"format must be json or md, got {format!r}")
        card = fed.model_card(version)
        if format == "md":
            return Response(to_markdown(card), media_type="text/markdown; charset=utf-8")
        return JSONResponse(card)

    @app.get("/v1/models/{version}/evaluations", tags=["governance"])
    def model_evaluations(version: int, _: Annotated[Principal, Depends(require("round.read"))]) -> dict:
        return fed.evaluations(version)

    @app.post("/v1/models/{version}/evaluations", tags=["participants"])
    def federated_evaluation(version: int, rep: EvaluationReport) -> dict:
        """A participant's scores on its own held-out data (signed; only metrics leave the site)."""
        return fed.record_federated_evaluation(version, rep)

    @app.get("/v1/gates", tags=["governance"])
    def gate_config(_: Annotated[Principal, Depends(require("round.read"))]) -> dict:
        return fed.gate_config.as_dict()

    @app.post("/v1/drift/reports", tags=["participants"])
    def drift_report(rep: DriftReport) -> dict:
        """A gateway's signed histogram of recent privatised telemetry (counts only)."""
        return fed.record_drift(rep)

    @app.get("/v1/drift", tags=["governance"])
    def drift_status(_: Annotated[Principal, Depends(require("round.read"))]) -> dict:
        return fed.drift_status()

    @app.get("/v1/drift/alerts", tags=["governance"])
    def drift_alerts(_: Annotated[Principal, Depends(require("round.read"))]) -> list[dict]:
        return fed.drift_alerts()

    # -- ledgers ---------------------------------------------------------------------------------
    @app.get("/v1/audit/entries", tags=["audit"])
    def audit_entries(_: Annotated[Principal, Depends(require("audit.read"))], start: int = 0,
                      limit: int = 1000) -> list:
        return fed.audit_entries(start=max(start, 0), limit=min(max(limit, 1), 10_000))

    @app.get("/v1/audit/checkpoint", tags=["audit"])
    def audit_checkpoint(_: Annotated[Principal, Depends(require("audit.read"))]) -> dict:
        return fed.latest_checkpoint()

    @app.get("/v1/audit/proof/{seq}", tags=["audit"])
    def audit_proof(seq: int, _: Annotated[Principal, Depends(require("audit.read"))]) -> dict:
        return fed.inclusion(seq)

    @app.get("/v1/privacy/ledger", tags=["privacy"])
    def privacy_ledger(_: Annotated[Principal, Depends(require("privacy.read"))]) -> list[dict]:
        return fed.privacy_ledger()

    @app.get("/v1/privacy/alerts", tags=["privacy"])
    def alerts(_: Annotated[Principal, Depends(require("alerts.read"))]) -> list[dict]:
        return fed.alerts()

    # -- key custody -----------------------------------------------------------------------------
    @app.get("/v1/custodian", tags=["custody"])
    def custodian_status() -> dict:
        return fed.custodian_status()

    @app.post("/v1/custodian/unseal", tags=["custody"])
    def unseal(req: UnsealShare, p: Annotated[Principal, Depends(require("custodian.unseal"))]) -> dict:
        return fed.add_share(p.name, req.share)

    return app
