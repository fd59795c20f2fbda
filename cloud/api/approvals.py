"""Two-person rules (`cloud.approvals`): list requests, approve or reject one (a different user with an approver
role than the requester)."""

from fastapi import APIRouter

from cloud.api.deps import STAFF, CloudDep, Id, Staff, errors
from federation.responses import ApprovalView
from federation.wire import Decision

router = APIRouter(tags=["approvals"])


@router.get("/v1/approvals", responses=errors(*STAFF))
def approvals(cloud: CloudDep, _: Staff("approval.read"), state: str | None = None) -> list[ApprovalView]:
    return cloud.approvals.list(state=state)


@router.post("/v1/approvals/{approval_id}/approve", responses=errors(*STAFF, 404, 409))
def approve(approval_id: Id, cloud: CloudDep, p: Staff("approval.decide")) -> ApprovalView:
    return cloud.approvals.approve(p, approval_id)


@router.post("/v1/approvals/{approval_id}/reject", responses=errors(*STAFF, 404, 409))
def reject(approval_id: Id, req: Decision, cloud: CloudDep, p: Staff("approval.decide")) -> ApprovalView:
    return cloud.approvals.reject(p, approval_id, req.reason)
