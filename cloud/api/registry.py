"""The model registry (public: versions, the release key, signed releases and TFLite artifacts; staff: the list)."""

from fastapi import APIRouter

from cloud.api.deps import STAFF, CloudDep, Id, Staff, errors
from cloud.api.readers import Reader
from federation.responses import ModelSummary, ModelView, ReleaseKey

router = APIRouter(tags=["public"])


@router.get("/v1/models/latest", responses=errors(401, 404))
def latest_model(cloud: CloudDep, caller: Reader) -> ModelView:
    """The newest version the caller may see (anonymous callers: the newest that was ever in production)."""
    return cloud.registry.get(None, staff=caller.staff is not None, participant=caller.participant is not None)


@router.get("/v1/models/promoted", responses=errors(401, 404))
def promoted_model(cloud: CloudDep, caller: Reader) -> ModelView:
    return cloud.registry.get(cloud.registry.promoted_version(), staff=caller.staff is not None)


@router.get("/v1/models", tags=["governance"], responses=errors(*STAFF))
def list_models(cloud: CloudDep, _: Staff("round.read")) -> list[ModelSummary]:
    return cloud.registry.list()


@router.get("/v1/models/{version}", responses=errors(401, 403, 404))
def model_version(version: Id, cloud: CloudDep, caller: Reader) -> ModelView:
    return cloud.registry.get(version, staff=caller.staff is not None, participant=caller.participant is not None)


@router.get("/v1/release-key")
def release_key(cloud: CloudDep) -> ReleaseKey:
    return cloud.registry.release_key_view()


@router.get("/v1/releases/current", responses=errors(404, 409))
def current_release(cloud: CloudDep) -> dict:
    return cloud.registry.release(cloud.registry.promoted_version())


@router.get("/v1/models/{version}/release", responses=errors(404, 409))
def model_release(version: Id, cloud: CloudDep) -> dict:
    return cloud.registry.release(version)


@router.get("/v1/releases/current/tflite", responses=errors(404, 409))
def current_tflite(cloud: CloudDep) -> dict:
    return cloud.releases.current()


@router.get("/v1/models/{version}/release/tflite", responses=errors(404))
def version_tflite(version: Id, cloud: CloudDep) -> dict:
    return cloud.releases.for_version(version)


@router.get("/v1/releases/tflite-status")
def tflite_status(cloud: CloudDep) -> dict:
    return cloud.releases.status()
