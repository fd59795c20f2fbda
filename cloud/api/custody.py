"""Key custody: the public CKKS context (public), the custodian's state (public), unsealing (admin or compliance)."""

from fastapi import APIRouter
from fastapi.responses import Response

from cloud.api.deps import STAFF, CloudDep, Staff, errors
from federation.responses import CustodianStatus
from federation.wire import UnsealShare

router = APIRouter(tags=["custody"])


@router.get("/v1/context", response_class=Response, tags=["public"])
def public_context(cloud: CloudDep) -> Response:
    return Response(cloud.keys.public_context_bytes, media_type="application/octet-stream")


@router.get("/v1/custodian", response_model_exclude_none=True)
def custodian_status(cloud: CloudDep) -> CustodianStatus:
    return cloud.keys.status()


@router.post("/v1/custodian/unseal", response_model_exclude_none=True, responses=errors(400, *STAFF, 409))
def unseal(req: UnsealShare, cloud: CloudDep, p: Staff("custodian.unseal")) -> CustodianStatus:
    return cloud.keys.add_share(p.name, req.share)
