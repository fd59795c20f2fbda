"""Participants: enrollment with a one-time token (public, the token authenticates); staff requests for enrollment
tokens, privacy caps, halting and resuming (two-person rules, `cloud.approvals`); the participant list."""

from fastapi import APIRouter

from cloud import rbac
from cloud.api.deps import STAFF, CloudDep, ParticipantId, Staff, errors
from federation.responses import ApprovalView, Enrolled, ParticipantView
from federation.wire import Decision, Enrollment, EpsilonCap, IssueEnrollmentToken

router = APIRouter(tags=["participants"])


@router.post("/v1/participants", status_code=201, responses=errors(400, 403, 409))
def enroll(req: Enrollment, cloud: CloudDep) -> Enrolled:
    return cloud.participants.enroll(req)


@router.post("/v1/enrollment-tokens", status_code=202, responses=errors(*STAFF))
def issue_token(req: IssueEnrollmentToken, cloud: CloudDep, p: Staff("enrollment_token.issue")) -> ApprovalView:
    """Requests a one-time token; it comes back once, in `secret`, and enrolls only after a compliance officer
    approves. `secret.ckks_key_id` is the key the participant should pin (`--ckks-key-id`)."""
    token = rbac.new_token("wfenroll")
    params = {"token_sha256": rbac.token_hash(token), "participant_id": req.participant_id, "kind": req.kind,
              "ttl_s": req.ttl_s, "uses": 1}
    return cloud.approvals.request(p, "enrollment_token.issue", params,
                                   secret={"token": token, "ckks_key_id": cloud.participants.binding["ckks_key_id"]})


@router.get("/v1/participants", responses=errors(*STAFF))
def participants(cloud: CloudDep, _: Staff("participant.list")) -> list[ParticipantView]:
    return cloud.participants.list()


@router.put("/v1/participants/{pid}/epsilon-cap", status_code=202, tags=["privacy"], responses=errors(*STAFF, 404))
def set_cap(pid: ParticipantId, req: EpsilonCap, cloud: CloudDep, p: Staff("participant.configure")) -> ApprovalView:
    return cloud.approvals.request(p, "participant.configure", {"participant": pid, "epsilon_cap": req.epsilon_cap},
                                   check=lambda s: cloud.participants.require(s, pid))


@router.post("/v1/participants/{pid}/halt", status_code=202, tags=["privacy"], responses=errors(*STAFF, 404))
def halt(pid: ParticipantId, req: Decision, cloud: CloudDep, p: Staff("participant.halt")) -> ApprovalView:
    return cloud.approvals.request(p, "participant.halt", {"participant": pid, "reason": req.reason},
                                   check=lambda s: cloud.participants.require(s, pid))


@router.post("/v1/participants/{pid}/resume", status_code=202, tags=["privacy"], responses=errors(*STAFF, 404))
def resume(pid: ParticipantId, req: Decision, cloud: CloudDep, p: Staff("participant.halt")) -> ApprovalView:
    return cloud.approvals.request(p, "participant.resume", {"participant": pid, "reason": req.reason},
                                   check=lambda s: cloud.participants.require(s, pid))
