"""From candidate to production: metrics, approval, rejection, promotion, rollback; evaluations, gates, model cards."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from cloud.api.deps import STAFF, CloudDep, Id, Staff, errors
from cloud.errors import BadRequest
from cloud.model_card import to_markdown
from federation.evaluation import EvaluationReport
from federation.responses import EvaluationAck, Evaluations, RollbackResult, RoundView
from federation.wire import Decision, EvaluationMetrics

router = APIRouter(tags=["rounds"])


@router.post("/v1/rounds/{round_id}/metrics", responses=errors(400, *STAFF, 404, 409))
def post_metrics(round_id: Id, req: EvaluationMetrics, cloud: CloudDep, p: Staff("round.evaluate")) -> RoundView:
    return cloud.promotion.record_metrics(p.name, round_id, req.metrics)


@router.post("/v1/rounds/{round_id}/approve", responses=errors(*STAFF, 404, 409))
def approve(round_id: Id, cloud: CloudDep, p: Staff("round.approve")) -> RoundView:
    return cloud.promotion.approve(p.name, round_id)


@router.post("/v1/rounds/{round_id}/reject", responses=errors(*STAFF, 404, 409))
def reject(round_id: Id, req: Decision, cloud: CloudDep, p: Staff("round.reject")) -> RoundView:
    return cloud.promotion.reject(p.name, round_id, req.reason)


@router.post("/v1/rounds/{round_id}/promote", responses=errors(*STAFF, 404, 409))
def promote(round_id: Id, cloud: CloudDep, p: Staff("model.promote")) -> RoundView:
    return cloud.promotion.promote(p.name, round_id)


@router.post("/v1/models/rollback", responses=errors(*STAFF, 409))
def rollback(req: Decision, cloud: CloudDep, p: Staff("model.rollback")) -> RollbackResult:
    return cloud.promotion.rollback(p.name, req.reason)


@router.get("/v1/models/{version}/card", tags=["governance"], responses=errors(400, *STAFF, 404))
def model_card(version: Id, cloud: CloudDep, _: Staff("round.read"),
               format: str = "json") -> Response:  # noqa: A002 - the query parameter's public name
    if format not in ("json", "md"):
        raise BadRequest(f"format must be json or md, got {format!r}")
    card = cloud.gatekeeper.card(version)
    if format == "md":
        return Response(to_markdown(card), media_type="text/markdown; charset=utf-8")
    return JSONResponse(card)


@router.get("/v1/models/{version}/evaluations", tags=["governance"], responses=errors(*STAFF, 404))
def model_evaluations(version: Id, cloud: CloudDep, _: Staff("round.read")) -> Evaluations:
    return cloud.evaluations.list(version)


@router.post("/v1/models/{version}/evaluations", tags=["participants"], responses=errors(400, 401, 403, 404, 409))
def federated_evaluation(version: Id, rep: EvaluationReport, cloud: CloudDep) -> EvaluationAck:
    """A participant's scores on its own held-out data (signed; only metrics leave the site)."""
    return cloud.evaluations.record_federated(version, rep)


@router.get("/v1/gates", tags=["governance"], responses=errors(*STAFF))
def gate_config(cloud: CloudDep, _: Staff("round.read")) -> dict:
    return cloud.gatekeeper.config.as_dict()
