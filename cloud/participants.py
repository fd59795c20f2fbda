"""Participants: one-time enrollment tokens, enrollment of Ed25519 identities, signature checks of what they send,
privacy caps and halting, and the compliance alerts raised about them."""

from __future__ import annotations

import base64
import logging
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud import rbac
from cloud.db import EnrollmentToken, Participant, utcnow
from cloud.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from cloud.governance_db import PendingAction
from cloud.intrusion import Intrusion
from cloud.record_db import Alert, PrivacySpend
from cloud.store import Store, aware
from federation import request_auth
from federation.enrollment import binding_mac
from federation.errors import SignatureError
from federation.responses import Enrolled, EnrollmentTokenIssued, ParticipantView
from federation.signing import verify
from federation.wire import Enrollment

log = logging.getLogger(__name__)
DEFAULT_ENROLL_TOKEN_TTL_S = 7 * 86400


class Participants:
    def __init__(self, store: Store, *, binding: dict, epsilon_cap: float | None = None,
                 enroll_token_ttl_s: float = DEFAULT_ENROLL_TOKEN_TTL_S) -> None:
        self.store = store
        self.binding = binding  # what enrolling nodes pin (federation.enrollment): CKKS key, cloud identity
        self.epsilon_cap = epsilon_cap  # global per-participant cap; a participant's own cap overrides it
        self.enroll_token_ttl_s = enroll_token_ttl_s
        self.intrusion: Intrusion | None = None  # set by cloud.assembly: locks and bad-signature signals

    # -- enrollment ------------------------------------------------------------------------------
    def issue_enrollment_token(self, actor: str, *, participant_id: str | None = None, kind: str | None = None,
                               ttl_s: float | None = None, uses: int = 1,
                               token: str | None = None) -> EnrollmentTokenIssued:
        """A token at once, without a second person: for the host's own tooling and tests. Through the API, issuing
        is a two-person action (`cloud.approvals`)."""
        token = token or rbac.new_token("wfenroll")
        expires = utcnow() + timedelta(seconds=ttl_s or self.enroll_token_ttl_s)
        with self.store.tx() as s:
            s.add(EnrollmentToken(token_sha256=rbac.token_hash(token), participant_id=participant_id, kind=kind,
                                  issued_by=actor, expires_at=expires, uses_left=uses, used_by=[]))
            self.store.append(s, "enrollment_token.issued", actor, token_sha256_prefix=rbac.token_hash(token)[:12],
                              participant_id=participant_id, kind=kind, uses=uses, expires_at=expires.isoformat())
        return EnrollmentTokenIssued(token=token, participant_id=participant_id, kind=kind, uses=uses,
                                     expires_at=expires.isoformat())

    def enroll(self, req: Enrollment) -> Enrolled:
        with self.store.refusals("enrollment.rejected", req.participant_id, action="enroll", kind=req.kind):
            raw_ed25519_key(req.public_key)
            digest = rbac.token_hash(req.token)
            with self.store.tx() as s:
                tok = self.usable_token(s, digest, participant_id=req.participant_id, kind=req.kind)
                existing = s.get(Participant, req.participant_id)
                if existing is not None:
                    other = "another key" if existing.public_key != req.public_key else "this key"
                    raise Conflict(f"participant {req.participant_id} is already enrolled with {other}")
                tok.uses_left -= 1
                tok.used_by = [*tok.used_by, req.participant_id]
                s.add(Participant(id=req.participant_id, kind=req.kind, public_key=req.public_key))
                self.store.append(s, "participant.enrolled", req.participant_id, kind=req.kind,
                                  public_key=req.public_key, token_sha256_prefix=digest[:12],
                                  token_issued_by=tok.issued_by)
        return Enrolled(participant_id=req.participant_id, status="enrolled", binding=self.binding,
                        binding_mac=binding_mac(digest, self.binding))

    @staticmethod
    def usable_token(s: Session, digest: str, *, participant_id: str, kind: str) -> EnrollmentToken:
        """The enrollment token with this hash, if it may enroll `participant_id` (or a region of that id) as `kind`."""
        tok = s.get(EnrollmentToken, digest)
        if tok is None:
            pending = pending_token_state(s, digest)
            if pending == "pending":
                raise Forbidden("enrollment token awaits a second person's approval (two-person rule)")
            raise Forbidden("enrollment token is not valid" + (f" (its request was {pending})" if pending else ""))
        if tok.uses_left <= 0:
            raise Conflict(f"enrollment token was already used (by {', '.join(tok.used_by)})")
        if utcnow() > aware(tok.expires_at):
            raise Forbidden(f"enrollment token expired at {aware(tok.expires_at).isoformat()}")
        if tok.participant_id is not None and tok.participant_id != participant_id:
            raise Forbidden(f"enrollment token was issued for {tok.participant_id}, not {participant_id}")
        if tok.kind is not None and tok.kind != kind:
            raise Forbidden(f"enrollment token was issued for a {tok.kind}, not a {kind}")
        return tok

    def authenticate_read(self, authorization: str, *, method: str, path: str, query: str) -> str | None:
        """The participant behind a signed read (`federation.request_auth`), None for any other caller; a signed read
        that does not verify is refused (401) and audited."""
        parsed = request_auth.parse(authorization)
        if parsed is None:
            return None
        pid, ts, signature = parsed
        with self.store.refusals("access.denied", pid, action="signed.read", path=path), self.store.read() as s:
            p = s.get(Participant, pid)
            if p is None:
                raise Unauthorized(f"participant {pid} is not enrolled")
            check_signed_read(p.public_key, pid, ts, signature, method=method, path=path, query=query)
        return pid

    def verified(self, s: Session, pid: str, doc: dict, signature: str, *, domain: bytes | None = None
                 ) -> Participant:
        """The enrolled participant `pid`, if `signature` over `doc` (in `domain`) is by its enrolled key and it is
        not locked by intrusion response; a signature that does not verify is signalled (`cloud.intrusion`)."""
        p = s.get(Participant, pid)
        if p is None:
            raise Forbidden(f"participant {pid} is not enrolled")
        try:
            if domain is None:
                verify(p.public_key, doc, signature)
            else:
                verify(p.public_key, doc, signature, domain=domain)
        except SignatureError as exc:
            if self.intrusion is not None:
                self.intrusion.signal("bad_signatures", claimed_participant=pid)
            raise Unauthorized(str(exc)) from exc
        if self.intrusion is not None and (rule := self.intrusion.locked("participant", pid)) is not None:
            raise Forbidden(f"participant {pid} is locked by intrusion response ({rule}) until it is lifted "
                            "(a compliance officer and a second person)")
        return p

    # -- privacy caps ----------------------------------------------------------------------------
    def cap(self, p: Participant) -> float | None:
        return p.epsilon_cap if p.epsilon_cap is not None else self.epsilon_cap

    @staticmethod
    def last_spend(s: Session, pid: str) -> PrivacySpend | None:
        return s.scalar(select(PrivacySpend).where(PrivacySpend.participant == pid)
                        .order_by(PrivacySpend.id.desc()).limit(1))

    def spent(self, s: Session, pid: str) -> float:
        last = self.last_spend(s, pid)
        return last.epsilon_recomputed if last is not None else 0.0

    def view(self, s: Session, p: Participant) -> ParticipantView:
        return ParticipantView(id=p.id, kind=p.kind, epsilon_cap=self.cap(p), halted=p.halted,
                               epsilon_spent=self.spent(s, p.id))

    def list(self) -> list[ParticipantView]:
        with self.store.read() as s:
            return [self.view(s, p) for p in s.scalars(select(Participant).order_by(Participant.id))]

    def require(self, s: Session, pid: str) -> Participant:
        p = s.get(Participant, pid)
        if p is None:
            raise NotFound(f"participant {pid} is not enrolled")
        return p

    def apply_cap(self, s: Session, p: Participant, cap: float | None, *, actor: str, **detail: object
                  ) -> ParticipantView:
        """Set a participant's own cap (None: the global one); halted exactly when its spend reaches the cap."""
        old, p.epsilon_cap = p.epsilon_cap, cap
        effective, spent = self.cap(p), self.spent(s, p.id)
        p.halted = effective is not None and spent >= effective
        self.store.append(s, "config.changed", actor, setting="epsilon_cap", participant=p.id, old=old, new=cap,
                          effective=effective, spent=spent, halted=p.halted, **detail)
        return self.view(s, p)

    def raise_alert(self, s: Session, kind: str, pid: str, **detail: object) -> None:
        s.add(Alert(kind=kind, participant=pid, detail=dict(detail)))
        self.store.append(s, "budget.alert", "cloud", alert=kind, participant=pid, **detail)
        log.warning("compliance alert %s for %s: %s", kind, pid, detail)


def pending_token_state(s: Session, token_sha256: str) -> str | None:
    """The state of the two-person request that would create this enrollment token, if there is one."""
    for row in s.scalars(select(PendingAction).where(PendingAction.action == "enrollment_token.issue")):
        if row.params.get("token_sha256") == token_sha256:
            return row.state
    return None


def raw_ed25519_key(b64: str) -> bytes:
    """An enrolling party's public key: base64 of the 32 raw Ed25519 bytes (BadRequest otherwise)."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError as exc:
        raise BadRequest("public_key is not base64") from exc
    if len(raw) != 32:
        raise BadRequest(f"public_key must be 32 raw Ed25519 bytes, got {len(raw)}")
    return raw


def check_signed_read(public_key: str, who: str, ts: int, signature: str, *, method: str, path: str,
                      query: str) -> None:
    """A signed read (`federation.request_auth`) by an enrolled key; Unauthorized (401) when it does not verify."""
    try:
        request_auth.check(public_key, who, ts, signature, method=method, path=path, query=query)
    except SignatureError as exc:
        raise Unauthorized(str(exc)) from exc
