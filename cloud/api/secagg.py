"""Secure aggregation (cloud.secagg_messages): participants' signed keys, shares, consistency signatures and unmasking
shares, their signed view of a round (alone, or several participants' in one batch); the phase status for staff."""

from fastapi import APIRouter

from cloud.api.deps import STAFF, CloudDep, Id, Staff, errors
from federation.responses import SecAggAck, SecAggBatchResult, SecAggStatus, SecAggView, SecAggViews
from federation.wire import (
    SecAggBatch,
    SecAggConsistency,
    SecAggKeys,
    SecAggShares,
    SecAggUnmask,
    SecAggViewBatch,
    SecAggViewRequest,
)

router = APIRouter(tags=["secure aggregation"])
SIGNED = errors(400, 401, 403, 404, 409)  # a participant's signed message


@router.post("/v1/rounds/{round_id}/secagg/keys", tags=["participants"], responses=SIGNED)
def keys(round_id: Id, msg: SecAggKeys, cloud: CloudDep) -> SecAggAck:
    return cloud.secagg_messages.post_keys(round_id, msg)


@router.post("/v1/rounds/{round_id}/secagg/shares", tags=["participants"], responses=SIGNED)
def shares(round_id: Id, msg: SecAggShares, cloud: CloudDep) -> SecAggAck:
    return cloud.secagg_messages.post_shares(round_id, msg)


@router.post("/v1/rounds/{round_id}/secagg/consistency", tags=["participants"], responses=SIGNED)
def consistency(round_id: Id, msg: SecAggConsistency, cloud: CloudDep) -> SecAggAck:
    return cloud.secagg_messages.post_consistency(round_id, msg)


@router.post("/v1/rounds/{round_id}/secagg/unmask", tags=["participants"], responses=SIGNED)
def unmask(round_id: Id, msg: SecAggUnmask, cloud: CloudDep) -> SecAggAck:
    return cloud.secagg_messages.post_unmask(round_id, msg)


@router.post("/v1/rounds/{round_id}/secagg/view", tags=["participants"], responses=SIGNED)
def view(round_id: Id, req: SecAggViewRequest, cloud: CloudDep) -> SecAggView:
    """A participant's view of the round: signed request, so participant lists are not public."""
    return cloud.secagg_messages.view(round_id, req)


@router.post("/v1/rounds/{round_id}/secagg/batch", tags=["participants"], responses=SIGNED)
def batch(round_id: Id, msgs: SecAggBatch, cloud: CloudDep) -> SecAggBatchResult:
    """Several participants' messages (a hospital pool's): each answered as if posted alone, after every signature
    in the batch has been checked."""
    return cloud.secagg_messages.post_batch(round_id, msgs)


@router.post("/v1/rounds/{round_id}/secagg/views", tags=["participants"], responses=SIGNED)
def views(round_id: Id, reqs: SecAggViewBatch, cloud: CloudDep) -> SecAggViews:
    """Several participants' views of the round in one answer; what they share is sent once."""
    return cloud.secagg_messages.views(round_id, reqs)


@router.get("/v1/rounds/{round_id}/secagg", responses=errors(*STAFF, 404))
def status(round_id: Id, cloud: CloudDep, _: Staff("round.read")) -> SecAggStatus:
    return cloud.secagg_messages.status(round_id)
