"""Region relays (hierarchical aggregation, `cloud.regions`): enrollment with a one-time token, the region's signed
read of the participants' keys, its signed aggregates and its answers to audits (bodies read raw so their size is
bounded before parsing, `cloud.body_limits.BODY_LIMITS`); for staff, the list of regions and a request to reinstate a
suspended one (two-person rule)."""

import asyncio

from fastapi import APIRouter, Header, Path, Request
from pydantic import BaseModel, Field

from cloud.api.deps import STAFF, CloudDep, Id, ParticipantId, Staff, errors
from cloud.errors import TooLarge
from federation.limits import MAX_REGION_AGGREGATE_BYTES, MAX_REGION_INPUTS_BYTES
from federation.responses import ApprovalView, Enrolled, RegionAck
from federation.wire import RegionAggregate, RegionEnrollment, RegionInputs

router = APIRouter(tags=["regions"])
SIGNED = errors(400, 401, 403, 404, 409)


async def _body(request: Request, limit: int) -> bytes:
    body = await request.body()
    if len(body) > limit:
        raise TooLarge(f"body of {len(body)} bytes exceeds {limit}")
    return body


@router.post("/v1/regions", status_code=201, responses=errors(400, 403, 409))
def enroll(req: RegionEnrollment, cloud: CloudDep) -> Enrolled:
    """A region relay enrolls its Ed25519 key with a one-time token issued for it (kind `region`, two-person rule)."""
    return cloud.regions.enroll(req)


@router.get("/v1/regions/{region_id}/participant-keys", responses=errors(401, 403))
def participant_keys(region_id: ParticipantId, request: Request, cloud: CloudDep,
                     authorization: str = Header(default="")) -> dict[str, str]:
    """The enrolled participants' public keys, for a region to check what its participants sign (signed read)."""
    caller = cloud.regions.authenticate_read(authorization, method="GET", path=request.url.path,
                                             query=request.url.query)
    return cloud.regions.participant_keys(region_id, caller)


@router.post("/v1/rounds/{round_id}/region-aggregates", responses=SIGNED)
async def submit(round_id: Id, request: Request, cloud: CloudDep) -> RegionAck:
    """One signed aggregate of a region's participants (`RegionAggregate`), taken whole or not at all."""
    body = await _body(request, MAX_REGION_AGGREGATE_BYTES)
    agg = RegionAggregate.model_validate_json(body)
    await asyncio.to_thread(cloud.witnesses.before_aggregate, round_id, agg)  # as the direct route: lapsed witnesses
    return await asyncio.to_thread(cloud.regions.submit, round_id, agg, body_bytes=len(body))


@router.post("/v1/rounds/{round_id}/region-aggregates/{sha256}/inputs", responses=SIGNED)
async def audit_inputs(round_id: Id, request: Request, cloud: CloudDep,
                       sha256: str = Path(pattern=r"^[0-9a-f]{64}$")) -> RegionAck:
    """The region's answer to an audit: every input of the aggregate, signed (`RegionInputs`)."""
    body = await _body(request, MAX_REGION_INPUTS_BYTES)
    inputs = RegionInputs.model_validate_json(body)
    return await asyncio.to_thread(cloud.regions.answer_audit, round_id, sha256, inputs, body_bytes=len(body))


class ReinstateRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


@router.get("/v1/regions", tags=["governance"], responses=errors(*STAFF))
def regions(cloud: CloudDep, _: Staff("region.read")) -> list[dict]:
    """Every enrolled region: its key, when it enrolled, and why it is suspended (null: not suspended)."""
    return cloud.regions.list()


@router.post("/v1/regions/{region_id}/reinstate", status_code=202, tags=["governance"],
             responses=errors(*STAFF, 404, 409))
def reinstate(region_id: ParticipantId, req: ReinstateRequest, cloud: CloudDep,
              p: Staff("region.reinstate")) -> ApprovalView:
    """Request lifting a region's suspension (after a failed audit) once investigated: its aggregates are taken
    again when a second person, a compliance officer, approves (`POST /v1/approvals/{id}/approve`)."""
    return cloud.approvals.request(p, "region.reinstate", {"region": region_id, "reason": req.reason},
                                   check=lambda s: cloud.regions.suspended(s, region_id))
