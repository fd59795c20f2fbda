"""Users and access control: bearer tokens (stored as SHA-256), roles, and the check of P(role, action) on every
staff request (`cloud.rbac`). A known user's denial (403) is audited as one entry; a missing or unknown token (401)
is counted (and, repeated, locked out) by `cloud.ratelimit`, never written one row per request."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cloud import rbac
from cloud.audit import AuditLog
from cloud.db import User
from cloud.errors import BadRequest, Conflict, Forbidden, Unauthorized
from cloud.intrusion import Intrusion
from cloud.store import Store
from federation.limits import PARTICIPANT_ID
from federation.responses import UserCreated, UserView

USER_NAME = re.compile(PARTICIPANT_ID)


@dataclass(frozen=True)
class Principal:
    name: str
    role: str


def validate_user(s: Session, name: str, role: str) -> None:
    if role not in rbac.ROLES:
        raise BadRequest(f"unknown role {role!r}; roles: {', '.join(rbac.ROLES)}")
    if not USER_NAME.match(name):
        raise BadRequest(f"user name {name!r} must match {USER_NAME.pattern}")
    if s.get(User, name) is not None:
        raise Conflict(f"user {name} exists")


def insert_user(store: Store, s: Session, actor: str, name: str, role: str, token: str | None) -> UserCreated:
    """Create a user at once (bootstrap and the offline CLI; through the API, `cloud.approvals` does it)."""
    validate_user(s, name, role)
    token = token or rbac.new_token()
    s.add(User(name=name, role=role, token_sha256=rbac.token_hash(token), created_by=actor))
    store.append(s, "user.created", actor, name=name, role=role)
    return UserCreated(name=name, role=role, token=token)


def create_user_offline(sessions: sessionmaker, audit: AuditLog, name: str, role: str) -> UserCreated:
    """`wearfed cloud create-user`: add a user straight to the database (audited, actor "cli")."""
    store = Store(sessions, audit)
    with store.tx() as s:
        return insert_user(store, s, "cli", name, role, None)


class Access:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.intrusion: Intrusion | None = None  # set by cloud.assembly: repeated denials of one user are signalled

    def bootstrap(self, name: str, role: str, token: str | None) -> None:
        """On first start, make `token` the bearer token of user `name` (the first admin, WEARFED_ADMIN_TOKEN, and the
        first compliance officer, WEARFED_COMPLIANCE_TOKEN: two people, so two-person rules can work from day one)."""
        if not token:
            return
        with self.store.tx() as s:
            if s.get(User, name) is None:
                s.add(User(name=name, role=role, token_sha256=rbac.token_hash(token), created_by="bootstrap"))
                self.store.append(s, "user.created", "bootstrap", name=name, role=role)

    def users(self) -> list[UserView]:
        with self.store.read() as s:
            return [UserView(name=u.name, role=u.role, created_by=u.created_by, disabled=u.disabled)
                    for u in s.scalars(select(User).order_by(User.name))]

    def authorize(self, authorization: str, action: str, *, path: str) -> Principal:
        """The caller behind a bearer token, if P(role, action) allows it; denials are audited."""
        token = authorization.removeprefix("Bearer ").strip() if authorization.startswith("Bearer ") else ""
        user = None
        if token:
            with self.store.read() as s:
                user = s.scalar(select(User).where(User.token_sha256 == rbac.token_hash(token)))
        locked = user is not None and self.intrusion is not None and self.intrusion.locked("user", user.name)
        if user is None or user.disabled or locked:  # counted per window by cloud.ratelimit, not a row per request
            raise Unauthorized("a valid bearer token is required")
        if not rbac.allowed(user.role, action):
            self.store.record("access.denied", user.name, status=403, role=user.role, action=action, path=path,
                              reason="role not permitted")
            if self.intrusion is not None:
                self.intrusion.signal("denials", user.name, role=user.role, action=action, path=path)
            raise Forbidden(f"role {user.role} may not {action}")
        return Principal(user.name, user.role)
