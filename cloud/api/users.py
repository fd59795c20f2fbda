"""Staff users: who am I, request a new user (admin; a compliance officer approves), list users (admin)."""

from fastapi import APIRouter

from cloud import rbac
from cloud.access import validate_user
from cloud.api.deps import STAFF, CloudDep, Staff, errors
from federation.responses import ApprovalView, UserView, Whoami
from federation.wire import CreateUser

router = APIRouter(tags=["users"])


@router.get("/v1/whoami", responses=errors(*STAFF))
def whoami(p: Staff("whoami")) -> Whoami:
    return Whoami(name=p.name, role=p.role)


@router.post("/v1/users", status_code=202, responses=errors(400, *STAFF, 409))
def create_user(req: CreateUser, cloud: CloudDep, p: Staff("user.create")) -> ApprovalView:
    """Requests the user; its bearer token comes back once, in `secret`, and works once a compliance officer
    approves."""
    token = rbac.new_token()
    return cloud.approvals.request(p, "user.create",
                                   {"name": req.name, "role": req.role, "token_sha256": rbac.token_hash(token)},
                                   check=lambda s: validate_user(s, req.name, req.role), secret={"token": token})


@router.get("/v1/users", responses=errors(*STAFF))
def users(cloud: CloudDep, _: Staff("user.list")) -> list[UserView]:
    return cloud.access.users()
