"""Explanations of a model version (`cloud.explainer`): global importance and local attributions of its forecasts
on the cloud's validation cohort, for the roles of ``model.explain``."""

from fastapi import APIRouter

from cloud.api.deps import STAFF, CloudDep, Id, Staff, errors
from cloud.errors import NotFound

router = APIRouter(tags=["governance"])


@router.get("/v1/models/{version}/explanations", responses=errors(*STAFF, 404))
def model_explanations(version: Id, cloud: CloudDep, _: Staff("model.explain")) -> dict:
    """``status`` computed (the document), pending (queued) or unavailable (no validation set)."""
    if cloud.explainer is None:
        raise NotFound("this cloud has no explanation service")
    return cloud.explainer.view(version)
