"""Two-person rules: an action of `cloud.rbac.TWO_PERSON` is requested by one user and carried out only when a
different user holding an approver role approves it (or refused when one rejects it); both steps are audited.

Secrets are never stored: a new user's bearer token and a new enrollment token are returned to the requester when
asked for and stored as SHA-256 only; they work once the action is approved. Requests expire after `TTL_S`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud import rbac
from cloud.access import Principal, validate_user
from cloud.db import EnrollmentToken, User, utcnow
from cloud.errors import BadRequest, Conflict, Forbidden, NotFound
from cloud.governance_db import PendingAction
from cloud.intrusion import Intrusion
from cloud.participants import Participants
from cloud.regions import Regions
from cloud.store import Store, aware
from federation.responses import ApprovalView

TTL_S = 7 * 86400
REQUEST_PERMISSION = {"participant.resume": "participant.halt"}  # resume is requested by whoever may halt
Executor = Callable[[Session, dict, PendingAction], dict]


def view(row: PendingAction) -> ApprovalView:
    return ApprovalView(id=row.id, action=row.action, params=row.params, state=row.state,
                        requested_by=row.requested_by, requested_at=aware(row.requested_at).isoformat(),
                        expires_at=aware(row.expires_at).isoformat(), decided_by=row.decided_by,
                        reason=row.reason, result=row.result)


class Approvals:
    def __init__(self, store: Store, participants: Participants) -> None:
        self.store = store
        self.participants = participants
        self._executors: dict[str, Executor] = {
            "user.create": self._create_user,
            "enrollment_token.issue": self._issue_token,
            "participant.configure": self._set_cap,
            "participant.halt": self._halt,
            "participant.resume": self._resume,
            "intrusion.lift": self._lift,
            "region.reinstate": self._reinstate,
        }
        self.intrusion: Intrusion | None = None  # set by cloud.assembly
        self.regions: Regions | None = None  # set by cloud.assembly

    def request(self, p: Principal, action: str, params: dict, *, check: Callable[[Session], None] | None = None,
                secret: dict | None = None) -> ApprovalView:
        """Record a pending action (after `check` validates it now); `secret` goes back to the requester only."""
        if action not in rbac.TWO_PERSON:
            raise BadRequest(f"{action} is not a two-person action")
        if not rbac.allowed(p.role, REQUEST_PERMISSION.get(action, action)):
            raise Forbidden(f"role {p.role} may not request {action}")
        with self.store.refusals("approval.rejected", p.name, action=action), self.store.tx() as s:
            if check is not None:
                check(s)
            row = PendingAction(action=action, params=params, requested_by=p.name,
                                expires_at=utcnow() + timedelta(seconds=TTL_S))
            s.add(row)
            s.flush()
            self.store.append(s, "approval.requested", p.name, approval=row.id, action=action, params=params,
                              approvers=sorted(rbac.TWO_PERSON[action]))
            out = view(row)
        return out.model_copy(update={"secret": secret}) if secret else out

    def list(self, *, state: str | None = None) -> list[ApprovalView]:
        with self.store.read() as s:
            q = select(PendingAction).order_by(PendingAction.id)
            if state is not None:
                q = q.where(PendingAction.state == state)
            return [view(r) for r in s.scalars(q)]

    def _pending(self, s: Session, approval_id: int, p: Principal) -> PendingAction:
        row = s.get(PendingAction, approval_id)
        if row is None:
            raise NotFound(f"approval {approval_id} does not exist")
        if row.state == "pending" and utcnow() > aware(row.expires_at):
            row.state = "expired"
        if row.state != "pending":
            raise Conflict(f"approval {approval_id} is {row.state}")
        if p.name == row.requested_by:
            raise Forbidden(f"two-person rule: {p.name} requested approval {approval_id} and may not decide it")
        if p.role not in rbac.TWO_PERSON[row.action]:
            raise Forbidden(f"role {p.role} may not approve {row.action} "
                            f"(approvers: {', '.join(sorted(rbac.TWO_PERSON[row.action]))})")
        return row

    def approve(self, p: Principal, approval_id: int) -> ApprovalView:
        with self.store.refusals("approval.rejected", p.name, approval=approval_id), self.store.tx() as s:
            row = self._pending(s, approval_id, p)
            row.decided_by = p.name  # the executor may name the approver (intrusion.lifted does)
            result = self._executors[row.action](s, dict(row.params), row)
            row.state, row.decided_by, row.decided_at, row.result = "approved", p.name, utcnow(), result
            self.store.append(s, "approval.approved", p.name, approval=row.id, action=row.action,
                              requested_by=row.requested_by, result=result)
            return view(row)

    def reject(self, p: Principal, approval_id: int, reason: str) -> ApprovalView:
        with self.store.refusals("approval.rejected", p.name, approval=approval_id), self.store.tx() as s:
            row = self._pending(s, approval_id, p)
            row.state, row.decided_by, row.decided_at, row.reason = "rejected", p.name, utcnow(), reason
            self.store.append(s, "approval.refused", p.name, approval=row.id, action=row.action,
                              requested_by=row.requested_by, reason=reason)
            return view(row)

    # -- what approval carries out (inside the approving transaction) ---------------------------
    def _create_user(self, s: Session, params: dict, row: PendingAction) -> dict:
        validate_user(s, params["name"], params["role"])
        s.add(User(name=params["name"], role=params["role"], token_sha256=params["token_sha256"],
                   created_by=row.requested_by))
        self.store.append(s, "user.created", row.requested_by, name=params["name"], role=params["role"],
                          approval=row.id)
        return {"name": params["name"], "role": params["role"]}

    def _issue_token(self, s: Session, params: dict, row: PendingAction) -> dict:
        if s.get(EnrollmentToken, params["token_sha256"]) is not None:
            raise Conflict("this enrollment token exists already")
        expires = utcnow() + timedelta(seconds=float(params["ttl_s"]))
        s.add(EnrollmentToken(token_sha256=params["token_sha256"], participant_id=params["participant_id"],
                              kind=params["kind"], issued_by=row.requested_by, expires_at=expires,
                              uses_left=int(params["uses"]), used_by=[]))
        self.store.append(s, "enrollment_token.issued", row.requested_by,
                          token_sha256_prefix=params["token_sha256"][:12], participant_id=params["participant_id"],
                          kind=params["kind"], uses=params["uses"], expires_at=expires.isoformat(), approval=row.id)
        return {"participant_id": params["participant_id"], "expires_at": expires.isoformat()}

    def _set_cap(self, s: Session, params: dict, row: PendingAction) -> dict:
        p = self.participants.require(s, params["participant"])
        return self.participants.apply_cap(s, p, params["epsilon_cap"], actor=row.requested_by,
                                           approval=row.id).model_dump()

    def _halt(self, s: Session, params: dict, row: PendingAction) -> dict:
        p = self.participants.require(s, params["participant"])
        p.halted = True
        self.store.append(s, "participant.halted", row.requested_by, participant=p.id, reason=params["reason"],
                          approval=row.id)
        return {"participant": p.id, "halted": True}

    def _lift(self, s: Session, params: dict, row: PendingAction) -> dict:
        assert self.intrusion is not None
        return self.intrusion.lift(s, int(params["lock"]), requested_by=row.requested_by,
                                   approved_by=str(row.decided_by or ""), reason=params["reason"], approval=row.id)

    def _reinstate(self, s: Session, params: dict, row: PendingAction) -> dict:
        assert self.regions is not None
        return self.regions.reinstate(s, params["region"], requested_by=row.requested_by,
                                      approved_by=str(row.decided_by or ""), reason=params["reason"], approval=row.id)

    def _resume(self, s: Session, params: dict, row: PendingAction) -> dict:
        p = self.participants.require(s, params["participant"])
        cap, spent = self.participants.cap(p), self.participants.spent(s, p.id)
        if cap is not None and spent >= cap:
            raise Conflict(f"participant {p.id} spent epsilon {spent:.4g} of its cap {cap}: raise the cap instead")
        p.halted = False
        self.store.append(s, "participant.resumed", row.requested_by, participant=p.id, reason=params["reason"],
                          approval=row.id)
        return {"participant": p.id, "halted": False}

