"""Intrusion response: for the compliance officer, locks, quarantined updates, witnesses and thresholds, and a
request to lift a lock (two-person rule); for nodes, signed reports of what they contained."""

from fastapi import APIRouter
from pydantic import BaseModel, Field

from cloud.api.deps import STAFF, CloudDep, Id, Staff, errors
from cloud.intrusion_reports import IntrusionReport, ReportAck
from federation.responses import ApprovalView

router = APIRouter(tags=["governance"])


class LiftRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


@router.get("/v1/intrusion", responses=errors(*STAFF))
def intrusion_status(cloud: CloudDep, _: Staff("intrusion.read")) -> dict:
    """Every lock (address, user, participant) with its rule and evidence, quarantined updates, each participant's
    last witnessed checkpoint, the thresholds."""
    return {**cloud.intrusion.status(), "witnesses": cloud.witnesses.status()}


@router.post("/v1/intrusion/locks/{lock_id}/lift", status_code=202, responses=errors(*STAFF, 404))
def intrusion_lift(lock_id: Id, req: LiftRequest, cloud: CloudDep, p: Staff("intrusion.lift")) -> ApprovalView:
    """Request lifting a lock after investigation: it is lifted (audited with the reason) when a second person, an
    admin or another compliance officer, approves (`POST /v1/approvals/{id}/approve`)."""
    return cloud.approvals.request(p, "intrusion.lift", {"lock": lock_id, "reason": req.reason},
                                   check=lambda s: cloud.intrusion.active_lock(s, lock_id))


@router.post("/v1/intrusion/reports", tags=["participants"], responses=errors(400, 401, 403, 409))
def intrusion_report(rep: IntrusionReport, cloud: CloudDep) -> ReportAck:
    """A node's signed report of a containment it carried out (a device's broker login revoked after ACL denials):
    a compliance alert and an ``intrusion.contained`` audit entry."""
    return cloud.intrusion_reports.record(rep)
