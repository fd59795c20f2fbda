"""Round logic of the aggregator: users, enrollment, the round state machine, encrypted FedAvg, the registry.

Round states (``TRANSITIONS``): open -> collecting -> aggregating -> decrypting -> completed (a candidate model
is registered) -> evaluated (a data scientist posted held-out metrics) -> staged (a compliance officer
approved it, gates passed) -> promoted (an operator or admin who did not open the round) -> rolled_back;
completed/evaluated/staged -> rejected; open..decrypting -> failed (with a reason).

Collection closes as soon as every expected participant has answered (update or refusal), or at the
deadline with whoever arrived if the quorum is met (stragglers are recorded); otherwise the round fails.
Aggregation and decryption are resumable: the aggregate is stored with the round, the model version is
written in the same transaction as the "completed" state, and `resume` continues any round found in
aggregating/decrypting after a crash. Every write that audits holds `_lock`, so the audit ledger has one
writer (one server process per database).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import re
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer, sessionmaker

from cloud import custody, rbac
from cloud.audit import AuditLog
from cloud.custodian import Custodian, CustodianRefusal, LedgerUpdate
from cloud.db import (
    Alert,
    CheckpointRow,
    EnrollmentToken,
    Event,
    ModelVersion,
    Participant,
    PrivacySpend,
    Refusal,
    Round,
    Setting,
    Update,
    User,
    utcnow,
)
from cloud.drift import DriftConfig
from cloud.errors import BadRequest, CloudError, Conflict, Forbidden, NotFound, Unauthorized, for_status
from cloud.gates import GateConfig
from cloud.governance import GovernanceMixin, ValidationSet
from cloud.privacy import PrivacyViolation, check_report
from federation import ckks, model
from federation.errors import SignatureError
from federation.merkle import MerkleLog
from federation.release import ReleaseManifest, make_release
from federation.signing import REFUSAL_DOMAIN, public_key_b64, verify
from federation.wire import Enrollment, OpenRound, Submission
from federation.wire import Refusal as RefusalMsg

log = logging.getLogger(__name__)
OPEN_STATES = ("open", "collecting")
TRANSITIONS: dict[str, frozenset[str]] = {
    "open": frozenset({"collecting", "failed"}),
    "collecting": frozenset({"aggregating", "failed"}),
    "aggregating": frozenset({"decrypting", "failed"}),
    "decrypting": frozenset({"completed", "failed"}),
    "completed": frozenset({"evaluated", "rejected"}),
    "evaluated": frozenset({"evaluated", "staged", "rejected"}),
    "staged": frozenset({"promoted", "rejected"}),
    "promoted": frozenset({"rolled_back"}),
}
CRASH_ENV = "WEARFED_TEST_CRASH_AT"  # test hook: SIGKILL this process at a named point (see _crash_point)
USER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
ROLLBACK_SETTING = "rollback_armed"


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def model_hash(weights: bytes, created_at: datetime) -> str:
    """H(weights || created_at) as the design fixes it (SHA-256 over the float32 bytes and ISO-8601 time)."""
    return hashlib.sha256(weights + _aware(created_at).isoformat().encode()).hexdigest()


def _crash_point(name: str) -> None:
    """Die here, as `kill -9` would, when the test hook names this point (restart-safety tests only)."""
    if os.environ.get(CRASH_ENV) == name:
        log.warning("crash hook %s: SIGKILL", name)
        os.kill(os.getpid(), signal.SIGKILL)


def _insert_user(s: Session, audit: AuditLog, actor: str, name: str, role: str, token: str | None) -> dict:
    if role not in rbac.ROLES:
        raise BadRequest(f"unknown role {role!r}; roles: {', '.join(rbac.ROLES)}")
    if not USER_NAME.match(name):
        raise BadRequest(f"user name {name!r} must match {USER_NAME.pattern}")
    if s.get(User, name) is not None:
        raise Conflict(f"user {name} exists")
    token = token or rbac.new_token()
    s.add(User(name=name, role=role, token_sha256=rbac.token_hash(token), created_by=actor))
    audit.append(s, "user.created", actor, {"name": name, "role": role})
    return {"name": name, "role": role, "token": token}


def create_user_offline(sessions: sessionmaker, audit: AuditLog, name: str, role: str) -> dict:
    """`wearfed cloud create-user`: add a user straight to the database (audited, actor "cli")."""
    audit.pin_key(sessions)
    with sessions.begin() as s:
        return _insert_user(s, audit, "cli", name, role, None)


@dataclass(frozen=True)
class Principal:
    name: str
    role: str


@dataclass(frozen=True)
class FederationConfig:
    epsilon_cap: float | None = None  # global per-participant cap; a participant's own cap overrides it
    enroll_token_ttl_s: float = 7 * 86400
    gates: GateConfig = GateConfig()  # promotion gates (cloud/gates.py; the shipped default file's values)
    drift: DriftConfig = DriftConfig()


class Federation(GovernanceMixin):
    def __init__(self, sessions: sessionmaker, *, public_context_bytes: bytes, audit: AuditLog,
                 release_key: Ed25519PrivateKey, custodian: Custodian | None = None,
                 sealed: custody.Sealed | None = None, config: FederationConfig | None = None,
                 model_seed: int = 0, validation: ValidationSet | None = None) -> None:
        self.sessions = sessions
        self.custodian = custodian
        self.sealed = sealed
        self.public_context_bytes = public_context_bytes
        self.public_context = ckks.load_context(public_context_bytes)
        self.audit = audit
        self.release_key = release_key
        self.config = config or FederationConfig()
        self.gate_config, self.drift_config, self.validation = self.config.gates, self.config.drift, validation
        self._lock = threading.RLock()
        self._shares: dict[int, tuple[str, str]] = {}  # share index -> (share, custodian user): in memory only
        self.release_hooks: list = []  # callables(version) run after a promotion or rollback commits (releases.py)
        audit.pin_key(sessions)
        self._ensure_initial_model(model_seed)
        self.validate_all()  # the cloud's own validation scores for any version that lacks them

    # -- helpers ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _tx(self) -> Iterator[Session]:
        """A write transaction holding the writer lock (the audit ledger has one writer)."""
        with self._lock, self.sessions.begin() as s:
            yield s

    def _audit(self, s: Session, kind: str, actor: str, /, **detail: object) -> None:
        self.audit.append(s, kind, actor, detail)

    def record(self, kind: str, actor: str, /, **detail: object) -> None:
        """Append one audit entry in its own transaction."""
        with self._tx() as s:
            self._audit(s, kind, actor, **detail)

    def _audited(self, kind: str, actor: str, call, /, **detail: object):  # noqa: ANN001, ANN202
        """Run `call`; a refusal (CloudError) is written to the audit log in its own transaction, then re-raised."""
        try:
            return call()
        except CloudError as exc:
            self.record("access.denied" if exc.status in (401, 403) else kind, actor, status=exc.status,
                        reason=exc.reason, **detail)
            raise

    def _ensure_initial_model(self, seed: int) -> None:
        with self._tx() as s:
            if s.get(ModelVersion, 0) is None:
                created = utcnow()
                w = model.init_weights(seed=seed).tobytes()
                s.add(ModelVersion(version=0, round_id=None, architecture=model.ARCHITECTURE, weights=w,
                                   hash=model_hash(w, created), created_at=created, status="promoted"))
                self._audit(s, "model.initialised", "cloud", version=0, seed=seed, status="promoted")

    # -- users and access control ----------------------------------------------------------------
    def bootstrap_admin(self, token: str | None) -> None:
        """On first start, make `token` (WEARFED_ADMIN_TOKEN) the bearer token of the user 'admin'."""
        if not token:
            return
        with self._tx() as s:
            if s.get(User, "admin") is None:
                s.add(User(name="admin", role="admin", token_sha256=rbac.token_hash(token), created_by="bootstrap"))
                self._audit(s, "user.created", "bootstrap", name="admin", role="admin")

    def create_user(self, actor: str, name: str, role: str, *, token: str | None = None) -> dict:
        return self._audited("user.rejected", actor, lambda: self._create_user(actor, name, role, token),
                             action="user.create", name=name, role=role)

    def _create_user(self, actor: str, name: str, role: str, token: str | None) -> dict:
        with self._tx() as s:
            return _insert_user(s, self.audit, actor, name, role, token)

    def users(self) -> list[dict]:
        with self.sessions() as s:
            return [{"name": u.name, "role": u.role, "created_by": u.created_by, "disabled": u.disabled}
                    for u in s.scalars(select(User).order_by(User.name))]

    def authorize(self, authorization: str, action: str, *, path: str) -> Principal:
        """The caller behind a bearer token, if P(role, action) allows it; denials are audited."""
        token = authorization.removeprefix("Bearer ").strip() if authorization.startswith("Bearer ") else ""
        user = None
        if token:
            with self.sessions() as s:
                user = s.scalar(select(User).where(User.token_sha256 == rbac.token_hash(token)))
        if user is None or user.disabled:
            self.record("access.denied", "anonymous", status=401, action=action, path=path,
                        reason="missing or unknown bearer token")
            raise Unauthorized("a valid bearer token is required")
        if not rbac.allowed(user.role, action):
            self.record("access.denied", user.name, status=403, role=user.role, action=action, path=path,
                        reason="role not permitted")
            raise Forbidden(f"role {user.role} may not {action}")
        return Principal(user.name, user.role)

    # -- enrollment ------------------------------------------------------------------------------
    def issue_enrollment_token(self, actor: str, *, participant_id: str | None = None, kind: str | None = None,
                               ttl_s: float | None = None, uses: int = 1, token: str | None = None) -> dict:
        token = token or rbac.new_token("wfenroll")
        expires = utcnow() + timedelta(seconds=ttl_s or self.config.enroll_token_ttl_s)
        with self._tx() as s:
            s.add(EnrollmentToken(token_sha256=rbac.token_hash(token), participant_id=participant_id, kind=kind,
                                  issued_by=actor, expires_at=expires, uses_left=uses, used_by=[]))
            self._audit(s, "enrollment_token.issued", actor, token_sha256_prefix=rbac.token_hash(token)[:12],
                        participant_id=participant_id, kind=kind, uses=uses, expires_at=expires.isoformat())
        return {"token": token, "participant_id": participant_id, "kind": kind, "uses": uses,
                "expires_at": expires.isoformat()}

    def enroll(self, req: Enrollment) -> dict:
        return self._audited("enrollment.rejected", req.participant_id, lambda: self._enroll(req),
                             action="enroll", kind=req.kind)

    def _enroll(self, req: Enrollment) -> dict:
        try:
            raw = base64.b64decode(req.public_key, validate=True)
        except ValueError as exc:
            raise BadRequest("public_key is not base64") from exc
        if len(raw) != 32:
            raise BadRequest(f"public_key must be 32 raw Ed25519 bytes, got {len(raw)}")
        digest = rbac.token_hash(req.token)
        with self._tx() as s:
            tok = s.get(EnrollmentToken, digest)
            if tok is None:
                raise Forbidden("enrollment token is not valid")
            if tok.uses_left <= 0:
                raise Conflict(f"enrollment token was already used (by {', '.join(tok.used_by)})")
            if utcnow() > _aware(tok.expires_at):
                raise Forbidden(f"enrollment token expired at {_aware(tok.expires_at).isoformat()}")
            if tok.participant_id is not None and tok.participant_id != req.participant_id:
                raise Forbidden(f"enrollment token was issued for {tok.participant_id}, not {req.participant_id}")
            if tok.kind is not None and tok.kind != req.kind:
                raise Forbidden(f"enrollment token was issued for a {tok.kind}, not a {req.kind}")
            existing = s.get(Participant, req.participant_id)
            if existing is not None:
                other = "another key" if existing.public_key != req.public_key else "this key"
                raise Conflict(f"participant {req.participant_id} is already enrolled with {other}")
            tok.uses_left -= 1
            tok.used_by = [*tok.used_by, req.participant_id]
            s.add(Participant(id=req.participant_id, kind=req.kind, public_key=req.public_key))
            self._audit(s, "participant.enrolled", req.participant_id, kind=req.kind, public_key=req.public_key,
                        token_sha256_prefix=digest[:12], token_issued_by=tok.issued_by)
        return {"participant_id": req.participant_id, "status": "enrolled"}

    def participants(self) -> list[dict]:
        with self.sessions() as s:
            out = []
            for p in s.scalars(select(Participant).order_by(Participant.id)):
                out.append({"id": p.id, "kind": p.kind, "epsilon_cap": self._cap(p), "halted": p.halted,
                            "epsilon_spent": self._spent(s, p.id)})
            return out

    def _cap(self, p: Participant) -> float | None:
        return p.epsilon_cap if p.epsilon_cap is not None else self.config.epsilon_cap

    @staticmethod
    def _last_spend(s: Session, pid: str) -> PrivacySpend | None:
        return s.scalar(select(PrivacySpend).where(PrivacySpend.participant == pid)
                        .order_by(PrivacySpend.id.desc()).limit(1))

    def _spent(self, s: Session, pid: str) -> float:
        last = self._last_spend(s, pid)
        return last.epsilon_recomputed if last is not None else 0.0

    def set_epsilon_cap(self, actor: str, pid: str, cap: float | None) -> dict:
        return self._audited("config.rejected", actor, lambda: self._set_cap(actor, pid, cap), participant=pid)

    def _set_cap(self, actor: str, pid: str, cap: float | None) -> dict:
        with self._tx() as s:
            p = s.get(Participant, pid)
            if p is None:
                raise NotFound(f"participant {pid} is not enrolled")
            old, p.epsilon_cap = p.epsilon_cap, cap
            effective = self._cap(p)
            spent = self._spent(s, pid)
            p.halted = effective is not None and spent >= effective
            self._audit(s, "config.changed", actor, setting="epsilon_cap", participant=pid, old=old, new=cap,
                        effective=effective, spent=spent, halted=p.halted)
            return {"id": pid, "epsilon_cap": effective, "halted": p.halted, "epsilon_spent": spent}

    def _raise_alert(self, s: Session, kind: str, pid: str, **detail: object) -> None:
        s.add(Alert(kind=kind, participant=pid, detail=dict(detail)))
        self._audit(s, "budget.alert", "cloud", alert=kind, participant=pid, **detail)
        log.warning("compliance alert %s for %s: %s", kind, pid, detail)

    # -- rounds ----------------------------------------------------------------------------------
    def _transition(self, s: Session, r: Round, state: str, actor: str = "cloud", **detail: object) -> None:
        if state not in TRANSITIONS.get(r.state, frozenset()):
            raise Conflict(f"round {r.id} is {r.state}; it cannot become {state}")
        prev, r.state = r.state, state
        self._audit(s, "round.state", actor, round=r.id, state=state, previous=prev, **detail)

    def open_round(self, req: OpenRound, *, actor: str) -> dict:
        return self._audited("round.rejected", actor, lambda: self._open_round(req, actor), action="round.open")

    def _open_round(self, req: OpenRound, actor: str) -> dict:
        with self._tx() as s:
            busy = s.scalar(select(Round).where(Round.state.in_(OPEN_STATES)))
            if busy is not None:
                raise Conflict(f"round {busy.id} is still {busy.state}")
            everyone = list(s.scalars(select(Participant).order_by(Participant.id)))
            expected = [p.id for p in everyone if not p.halted]
            halted = [p.id for p in everyone if p.halted]
            if len(expected) < req.quorum:
                raise Conflict(f"quorum {req.quorum} exceeds the {len(expected)} enrolled participants "
                               f"within their privacy budget (halted: {halted})")
            base = s.scalar(select(ModelVersion.version).where(ModelVersion.status == "promoted"))
            rnd = Round(state="open", quorum=req.quorum, expected=expected, base_model_version=base,
                        local_epochs=req.local_epochs, data_cutoff=req.data_cutoff, opened_by=actor,
                        deadline_at=utcnow() + timedelta(seconds=req.deadline_s))
            s.add(rnd)
            s.flush()
            self._audit(s, "round.opened", actor, round=rnd.id, quorum=req.quorum, expected=expected,
                        excluded_at_cap=halted, base_model_version=base, deadline_s=req.deadline_s)
            self._transition(s, rnd, "collecting", actor)
            return self._round_view(s, rnd)

    def _round_view(self, s: Session, r: Round) -> dict:
        m = s.scalar(select(ModelVersion).where(ModelVersion.round_id == r.id))
        return {"round": r.id, "state": r.state, "quorum": r.quorum, "expected": r.expected,
                "base_model_version": r.base_model_version, "local_epochs": r.local_epochs,
                "data_cutoff": r.data_cutoff, "deadline_at": _aware(r.deadline_at).isoformat(),
                "opened_by": r.opened_by, "contributors": r.contributors,
                "result_model_version": r.result_model_version, "failure_reason": r.failure_reason,
                "evaluated_by": r.evaluated_by, "approved_by": r.approved_by, "decided_by": r.decided_by,
                "model_status": m.status if m else None, "metrics": m.metrics if m else None}

    PUBLIC_ROUND_FIELDS = ("round", "state", "quorum", "expected", "base_model_version", "local_epochs",
                           "data_cutoff", "deadline_at", "result_model_version", "failure_reason")

    def current_round(self) -> dict:
        """What participants need to answer the newest round (public: no staff names, no metrics)."""
        with self.sessions() as s:
            r = s.scalar(select(Round).order_by(Round.id.desc()).limit(1))
            if r is None:
                raise NotFound("no round has been opened yet")
            view = self._round_view(s, r)
            return {k: view[k] for k in self.PUBLIC_ROUND_FIELDS}

    def round_report(self, round_id: int) -> dict:
        with self.sessions() as s:
            r = s.get(Round, round_id)
            if r is None:
                raise NotFound(f"round {round_id} does not exist")
            view = self._round_view(s, r)
            ups = s.scalars(select(Update).where(Update.round_id == round_id).order_by(Update.participant)
                            .options(defer(Update.ciphertext))).all()  # the report never needs the ciphertexts
            view["updates"] = [{"participant": u.participant, "n_samples": u.n_samples,
                                "dp": u.envelope["dp"], "bytes": u.bytes_received,
                                "ciphertext_sha256": u.ciphertext_sha256} for u in ups]
            refs = s.scalars(select(Refusal).where(Refusal.round_id == round_id)).all()
            view["refusals"] = [{"participant": x.participant, "reason": x.reason} for x in refs]
            return view

    def _collecting(self, s: Session, round_id: int, *, arrived: datetime | None = None) -> Round:
        """The round, if it is collecting and `arrived` (default: now) is before its deadline."""
        r = s.get(Round, round_id)
        if r is None:
            raise NotFound(f"round {round_id} does not exist")
        if r.state != "collecting":
            raise Conflict(f"round {round_id} is not collecting (state: {r.state}); the submission is late")
        if (arrived or utcnow()) > _aware(r.deadline_at):
            raise Conflict(f"round {round_id} passed its deadline; the submission is late")
        return r

    def submit(self, round_id: int, sub: Submission, *, body_bytes: int) -> dict:
        return self._audited("update.rejected", sub.envelope.participant,
                             lambda: self._submit(round_id, sub, body_bytes=body_bytes), action="submit",
                             round=round_id, ciphertext_sha256=sub.envelope.ciphertext_sha256)

    def _verified_participant(self, s: Session, pid: str, doc: dict, signature: str, *,
                              domain: bytes | None = None) -> Participant:
        p = s.get(Participant, pid)
        if p is None:
            raise Forbidden(f"participant {pid} is not enrolled")
        try:
            if domain is None:
                verify(p.public_key, doc, signature)
            else:
                verify(p.public_key, doc, signature, domain=domain)
        except SignatureError as exc:
            raise Unauthorized(str(exc)) from exc
        return p

    def _submit(self, round_id: int, sub: Submission, *, body_bytes: int) -> dict:
        arrived = utcnow()  # lateness is judged on arrival, not after the (slow) checks
        env = sub.envelope
        if env.round != round_id:
            raise BadRequest(f"envelope is for round {env.round}, posted to round {round_id}")
        try:
            ciphertext = base64.b64decode(sub.ciphertext, validate=True)
        except ValueError as exc:
            raise BadRequest("ciphertext is not base64") from exc
        doc = env.model_dump(mode="json")
        digest = hashlib.sha256(ciphertext).hexdigest()
        # Cheap checks and the replay test first, without the writer lock.
        with self.sessions() as s:
            p = self._verified_participant(s, env.participant, doc, sub.signature)
            if digest != env.ciphertext_sha256:
                raise BadRequest(f"ciphertext sha256 {digest} does not match the signed {env.ciphertext_sha256}")
            prior = s.scalar(select(Update).where(Update.round_id == round_id, Update.participant == env.participant))
            if prior is not None:
                if prior.idempotency_key == env.idempotency_key and prior.ciphertext_sha256 == digest:
                    replay = True
                else:
                    raise Conflict(f"participant {env.participant} already submitted to round {round_id}")
            else:
                replay = False
                r = self._collecting(s, round_id, arrived=arrived)
                if p.halted:
                    raise Forbidden(f"participant {env.participant} is at its privacy cap and halted")
                self._check_round_fit(r, env)
                last = self._last_spend(s, env.participant)
                cap = self._cap(p)
        if replay:  # an exact resend (a node's outbox after a crash): acknowledged, never counted twice
            self.record("update.replayed", env.participant, round=round_id, ciphertext_sha256=digest)
            return {"status": "accepted", "duplicate": True, "round": round_id}
        try:
            n = ckks.check(self.public_context, ciphertext)
        except ckks.CKKSError as exc:
            raise BadRequest(str(exc)) from exc
        if n != model.N_PARAMS:
            raise BadRequest(f"update has {n} values, {model.ARCHITECTURE} has {model.N_PARAMS}")
        try:
            spend = check_report(env.dp, previous=last.history if last else [], cap=cap)
        except PrivacyViolation as exc:
            if exc.status == 403:
                with self._tx() as s:
                    s.get(Participant, env.participant).halted = True
                    self._raise_alert(s, "budget.exceeded", env.participant, round=round_id, cap=cap,
                                      reason=exc.reason)
            raise for_status(exc.status, exc.reason) from exc
        with self._tx() as s:
            if s.scalar(select(Update).where(Update.round_id == round_id, Update.participant == env.participant)):
                raise Conflict(f"participant {env.participant} already submitted to round {round_id}")
            now_last = self._last_spend(s, env.participant)
            if (now_last.id if now_last else None) != (last.id if last else None):
                raise Conflict("the privacy ledger changed while this update was checked; resend it")
            r = self._collecting(s, round_id, arrived=arrived)
            s.add(Update(round_id=round_id, participant=env.participant, n_samples=env.n_samples,
                         envelope=doc, signature=sub.signature, ciphertext=ciphertext,
                         ciphertext_sha256=digest, idempotency_key=env.idempotency_key,
                         bytes_received=body_bytes))
            s.add(PrivacySpend(round_id=round_id, participant=env.participant, history=[list(h) for h in spend.history],
                               accountant=env.dp.accountant, delta=env.dp.delta,
                               epsilon_declared=env.dp.epsilon_cumulative, epsilon_recomputed=spend.epsilon_cumulative,
                               epsilon_round=spend.epsilon_round, cap=cap))
            self._audit(s, "update.accepted", env.participant, round=round_id, ciphertext_sha256=digest,
                        n_samples=env.n_samples, epsilon=spend.epsilon_cumulative,
                        epsilon_declared=env.dp.epsilon_cumulative, epsilon_round=spend.epsilon_round,
                        delta=env.dp.delta, unit=env.dp.unit, accountant=env.dp.accountant)
            if cap is not None and spend.epsilon_cumulative >= cap:
                s.get(Participant, env.participant).halted = True
                self._raise_alert(s, "budget.exhausted", env.participant, round=round_id, cap=cap,
                                  epsilon=spend.epsilon_cumulative, delta=env.dp.delta, unit=env.dp.unit,
                                  accountant=env.dp.accountant)
            count = s.scalar(select(func.count()).select_from(Update).where(Update.round_id == r.id))
        _crash_point(f"after-update:{count}")
        self._maybe_close(round_id)
        return {"status": "accepted", "duplicate": False, "round": round_id}

    @staticmethod
    def _check_round_fit(r: Round, env) -> None:  # noqa: ANN001
        if env.participant not in r.expected:
            raise Conflict(f"participant {env.participant} is not expected in round {r.id} "
                           "(enrolled later, or halted at its privacy cap)")
        if env.base_model_version != r.base_model_version:
            raise Conflict(f"update is based on model {env.base_model_version}, "
                           f"round {r.id} trains model {r.base_model_version}")

    def refuse(self, round_id: int, msg: RefusalMsg) -> dict:
        return self._audited("refusal.rejected", msg.participant, lambda: self._refuse(round_id, msg),
                             action="refuse", round=round_id)

    def _refuse(self, round_id: int, msg: RefusalMsg) -> dict:
        if msg.round != round_id:
            raise BadRequest(f"refusal is for round {msg.round}, posted to round {round_id}")
        with self._tx() as s:
            doc = msg.model_dump(mode="json", exclude={"signature"})
            self._verified_participant(s, msg.participant, doc, msg.signature, domain=REFUSAL_DOMAIN)
            self._collecting(s, round_id)
            if s.scalar(select(Refusal).where(Refusal.round_id == round_id,
                                              Refusal.participant == msg.participant)) is None:
                s.add(Refusal(round_id=round_id, participant=msg.participant, reason=msg.reason))
                self._audit(s, "round.refused", msg.participant, round=round_id, reason=msg.reason)
        self._maybe_close(round_id)
        return {"status": "refusal-recorded", "round": round_id}

    # -- closing, aggregation, decryption (resumable) -------------------------------------------------
    def _maybe_close(self, round_id: int, *, deadline_passed: bool = False) -> None:
        with self._lock:
            with self._tx() as s:
                r = s.get(Round, round_id)
                if r is None or r.state != "collecting":
                    return
                accepted = sorted(s.scalars(select(Update.participant).where(Update.round_id == round_id)))
                refused = [x.participant for x in s.scalars(select(Refusal).where(Refusal.round_id == round_id))]
                # a participant halted at its privacy cap during the round will not answer: don't wait for it
                halted = {p.id for p in s.scalars(select(Participant).where(Participant.halted.is_(True)))}
                everyone = set(accepted) | set(refused) | halted >= set(r.expected)
                if not (everyone or deadline_passed):
                    return
                stragglers = sorted(set(r.expected) - set(accepted) - set(refused))
                r.closed_at = utcnow()
                if len(accepted) < r.quorum:
                    r.failure_reason = f"quorum not met: {len(accepted)} accepted updates, quorum {r.quorum}"
                    self._transition(s, r, "failed", reason=r.failure_reason, stragglers=stragglers)
                    log.warning("round %s failed: %s", round_id, r.failure_reason)
                    return
                r.contributors = accepted
                self._transition(s, r, "aggregating", contributors=accepted, stragglers=stragglers,
                                 refused=sorted(refused))
            self._advance(round_id)

    def _advance(self, round_id: int) -> None:
        """Carry a round through aggregating and decrypting, from whatever the database says (idempotent)."""
        with self._lock:
            try:
                with self.sessions() as s:
                    state = s.get(Round, round_id).state
                if state == "aggregating":
                    self._aggregate(round_id)
                    state = "decrypting"
                if state == "decrypting":
                    if self.custodian is None:
                        log.info("round %s waits for the custodian to be unsealed", round_id)
                        return
                    self._decrypt(round_id)
            except CustodianRefusal as exc:
                with self._tx() as s:
                    self._audit(s, "custodian.refused", "custodian", round=round_id, reason=str(exc))
                    r = s.get(Round, round_id)
                    r.failure_reason = f"custodian refused: {exc}"
                    self._transition(s, r, "failed", reason=r.failure_reason)
            except Exception as exc:  # a failed aggregation fails the round, never the server
                log.exception("aggregation of round %s failed", round_id)
                with self._tx() as s:
                    r = s.get(Round, round_id)
                    if r.state in ("aggregating", "decrypting"):
                        r.failure_reason = f"aggregation failed: {exc}"[:500]
                        self._transition(s, r, "failed", reason=r.failure_reason)

    def _contributing_updates(self, s: Session, r: Round) -> list[Update]:
        ups = s.scalars(select(Update).where(Update.round_id == r.id).order_by(Update.participant)).all()
        return [u for u in ups if u.participant in set(r.contributors or [])]

    def _aggregate(self, round_id: int) -> None:
        _crash_point("aggregating")
        with self.sessions() as s:
            r = s.get(Round, round_id)
            blobs = [u.ciphertext for u in self._contributing_updates(s, r)]
        summed = ckks.sum_encrypted(self.public_context, blobs)
        with self._tx() as s:
            r = s.get(Round, round_id)
            r.aggregate, r.aggregate_sha256 = summed, hashlib.sha256(summed).hexdigest()
            self._audit(s, "aggregate.computed", "cloud", round=round_id, contributors=r.contributors,
                        aggregate_sha256=r.aggregate_sha256)
            self._transition(s, r, "decrypting")

    def _decrypt(self, round_id: int) -> None:
        _crash_point("decrypting")
        with self.sessions() as s:
            r = s.get(Round, round_id)
            ups = self._contributing_updates(s, r)
            keys = {p.id: p.public_key for p in s.scalars(select(Participant))}
            ledger = [LedgerUpdate(participant=u.participant, public_key=keys[u.participant], envelope=u.envelope,
                                   signature=u.signature, ciphertext=u.ciphertext) for u in ups]
            accepted = {e.detail.get("ciphertext_sha256") for e in
                        s.scalars(select(Event).where(Event.kind == "update.accepted"))
                        if e.detail.get("round") == round_id}
            aggregate, quorum, contributors = r.aggregate, r.quorum, list(r.contributors or [])
            total = sum(u.n_samples for u in ups)
            base_weights = np.frombuffer(s.get(ModelVersion, r.base_model_version).weights, dtype=np.float32)
            privacy = {}
            for sp in s.scalars(select(PrivacySpend).where(PrivacySpend.round_id == round_id)):
                privacy[sp.participant] = {"epsilon": sp.epsilon_recomputed, "delta": sp.delta, "unit": "window",
                                           "accountant": sp.accountant, "cap": sp.cap}
        weighted_delta = self.custodian.decrypt_aggregate(aggregate, updates=ledger, quorum=quorum,
                                                          accepted_hashes=accepted)
        new_weights = (base_weights + ckks.average_update(weighted_delta, total)).astype(np.float32)
        validation_scores = self.score_on_validation(new_weights)  # before "completed": gates can count on it
        with self._tx() as s:
            r = s.get(Round, round_id)
            if r.state != "decrypting":  # another thread finished it
                return
            self._audit(s, "aggregate.decrypted", "custodian", round=round_id, contributors=contributors,
                        custodian_mode=self.custodian.mode, aggregate_sha256=r.aggregate_sha256)
            version = (s.scalar(select(func.max(ModelVersion.version))) or 0) + 1
            created = utcnow()
            w = new_weights.tobytes()
            h = model_hash(w, created)
            s.add(ModelVersion(version=version, round_id=round_id, architecture=model.ARCHITECTURE, weights=w,
                               hash=h, created_at=created, participants=contributors, n_samples=total,
                               status="candidate", privacy=privacy))
            r.result_model_version = version
            self._audit(s, "model.registered", "cloud", version=version, round=round_id, hash=h,
                        participants=contributors, n_samples=total, privacy=privacy)
            s.flush()
            self.store_validation(s, version, validation_scores)
            self.snapshot_drift_baseline(s, r)
            self._transition(s, r, "completed", model_version=version)
        log.info("round %s completed: model v%s from %s", round_id, version, contributors)

    def resume(self) -> None:
        """Continue every round a crash left behind: collecting (all answered) or aggregating/decrypting."""
        with self.sessions() as s:
            rounds = [(r.id, r.state) for r in s.scalars(select(Round).where(
                Round.state.in_(("collecting", "aggregating", "decrypting"))))]
        for rid, state in rounds:
            if state == "collecting":
                self._maybe_close(rid)
            else:
                log.warning("resuming round %s from state %s", rid, state)
                self._advance(rid)

    def tick(self) -> None:
        """Close rounds whose deadline has passed, and continue any round waiting to aggregate or decrypt."""
        with self.sessions() as s:
            due = [r.id for r in s.scalars(select(Round).where(Round.state == "collecting"))
                   if utcnow() > _aware(r.deadline_at)]
        for rid in due:
            self._maybe_close(rid, deadline_passed=True)
        self.resume()

    # -- evaluation, approval, promotion, rollback --------------------------------------------
    def _round_with_model(self, s: Session, round_id: int) -> tuple[Round, ModelVersion]:
        r = s.get(Round, round_id)
        if r is None:
            raise NotFound(f"round {round_id} does not exist")
        m = s.scalar(select(ModelVersion).where(ModelVersion.round_id == round_id))
        if m is None:
            raise Conflict(f"round {round_id} has no model (state: {r.state})")
        return r, m

    def record_metrics(self, actor: str, round_id: int, metrics: dict[str, float]) -> dict:
        return self._audited("round.rejected", actor, lambda: self._record_metrics(actor, round_id, metrics),
                             action="round.evaluate", round=round_id)

    def _record_metrics(self, actor: str, round_id: int, metrics: dict[str, float]) -> dict:
        with self._tx() as s:
            r, m = self._round_with_model(s, round_id)
            m.metrics = dict(metrics)
            self.record_posted(s, m.version, actor, dict(metrics))
            r.evaluated_by = actor
            self._transition(s, r, "evaluated", actor, model_version=m.version, metrics=metrics)
            return self._round_view(s, r)

    def approve(self, actor: str, round_id: int) -> dict:
        return self._audited("promotion.blocked", actor, lambda: self._approve(actor, round_id),
                             action="round.approve", round=round_id)

    def _approve(self, actor: str, round_id: int) -> dict:
        with self._tx() as s:
            r, m = self._round_with_model(s, round_id)
            if actor == r.opened_by:
                raise Forbidden(f"segregation of duties: {actor} opened round {round_id} and may not approve it")
            if r.state != "evaluated":
                raise Conflict(f"round {round_id} is {r.state}; only an evaluated round can be approved")
            failed = self._record_gates(s, m.version, "approve", actor, self.check_gates(s, r, m))
            if not failed:
                r.approved_by = actor
                self._transition(s, r, "staged", actor, model_version=m.version, gates="passed")
                return self._round_view(s, r)
        raise Conflict("; ".join(f.message for f in failed))  # the gate check above is committed and audited

    def reject(self, actor: str, round_id: int, reason: str) -> dict:
        return self._audited("round.rejected", actor, lambda: self._reject(actor, round_id, reason),
                             action="round.reject", round=round_id)

    def _reject(self, actor: str, round_id: int, reason: str) -> dict:
        with self._tx() as s:
            r, m = self._round_with_model(s, round_id)
            m.status, r.decided_by = "rejected", actor
            self._transition(s, r, "rejected", actor, model_version=m.version, reason=reason)
            return self._round_view(s, r)

    def promote(self, actor: str, round_id: int) -> dict:
        view = self._audited("promotion.blocked", actor, lambda: self._promote(actor, round_id),
                             action="model.promote", round=round_id)
        self._release_changed()
        return view

    def _release_changed(self) -> None:
        """Tell the release hooks (TFLite export, cloud/releases.py) which version is now promoted."""
        version = self.promoted_version()
        for hook in self.release_hooks:
            try:
                hook(version)
            except Exception:  # a failing hook must not undo a committed promotion
                log.exception("release hook failed for v%s", version)

    def _promote(self, actor: str, round_id: int) -> dict:
        with self._tx() as s:
            r, m = self._round_with_model(s, round_id)
            if actor == r.opened_by:
                raise Forbidden(f"segregation of duties: {actor} opened round {round_id} and may not promote it")
            if r.state != "staged" or not r.approved_by:
                raise Conflict(f"round {round_id} is {r.state}: promotion needs a compliance officer's approval")
            failed = self._record_gates(s, m.version, "promote", actor, self.check_gates(s, r, m))
            if not failed:
                old = s.scalar(select(ModelVersion).where(ModelVersion.status == "promoted"))
                if old is not None:
                    old.status = "retired"
                m.status, m.replaced_version, r.decided_by = "promoted", old.version if old else None, actor
                self._set_setting(s, ROLLBACK_SETTING, str(m.version))
                self._audit(s, "model.promoted", actor, version=m.version, hash=m.hash, round=round_id,
                            replaced=m.replaced_version, approved_by=r.approved_by, metrics=m.metrics)
                self._transition(s, r, "promoted", actor, model_version=m.version)
                return self._round_view(s, r)
        raise Conflict("; ".join(f.message for f in failed))  # the gate check above is committed and audited

    @staticmethod
    def _set_setting(s: Session, key: str, value: str) -> None:
        row = s.get(Setting, key)
        if row is None:
            s.add(Setting(key=key, value=value))
        else:
            row.value = value

    def rollback(self, actor: str, reason: str) -> dict:
        out = self._audited("rollback.rejected", actor, lambda: self._rollback(actor, reason),
                            action="model.rollback")
        self._release_changed()
        return out

    def _rollback(self, actor: str, reason: str) -> dict:
        with self._tx() as s:
            armed = s.get(Setting, ROLLBACK_SETTING)
            current = s.scalar(select(ModelVersion).where(ModelVersion.status == "promoted"))
            if armed is None or not armed.value or current is None or str(current.version) != armed.value \
                    or current.replaced_version is None:
                raise Conflict("nothing to roll back: rollback is one step, back from the last promotion")
            previous = s.get(ModelVersion, current.replaced_version)
            current.status, previous.status = "rolled_back", "promoted"
            armed.value = ""
            self._audit(s, "model.rolled_back", actor, from_version=current.version, to_version=previous.version,
                        reason=reason)
            r = s.get(Round, current.round_id)
            self._transition(s, r, "rolled_back", actor, model_version=current.version)
            return {"promoted": previous.version, "rolled_back": current.version}

    # -- ledgers ---------------------------------------------------------------------------------
    def audit_entries(self, *, start: int = 0, limit: int = 1000) -> list[dict]:
        with self.sessions() as s:
            rows = s.scalars(select(Event).where(Event.seq >= start).order_by(Event.seq).limit(limit))
            return [{"seq": e.seq, "at": e.at, "kind": e.kind, "actor": e.actor, "detail": e.detail} for e in rows]

    def latest_checkpoint(self) -> dict:
        with self.sessions() as s:
            c = s.scalar(select(CheckpointRow).order_by(CheckpointRow.tree_size.desc()).limit(1))
            return {"tree_size": c.tree_size, "body": c.body, "signature": c.signature,
                    "public_key": self.audit.public_key_b64}

    def inclusion(self, seq: int) -> dict:
        from cloud.audit import row_bytes

        with self.sessions() as s:
            events = s.scalars(select(Event).order_by(Event.seq)).all()
        if not 0 <= seq < len(events):
            raise NotFound(f"audit entry {seq} does not exist")
        log_ = MerkleLog(leaf_hashes=())
        for e in events:
            log_.append(row_bytes(e))
        return {"seq": seq, "tree_size": len(events), "root": log_.root().hex(),
                "proof": [h.hex() for h in log_.inclusion_proof(seq)]}

    def privacy_ledger(self) -> list[dict]:
        with self.sessions() as s:
            out = []
            for p in s.scalars(select(Participant).order_by(Participant.id)):
                rows = s.scalars(select(PrivacySpend).where(PrivacySpend.participant == p.id)
                                 .order_by(PrivacySpend.id)).all()
                out.append({"participant": p.id, "cap": self._cap(p), "halted": p.halted,
                            "epsilon_spent": rows[-1].epsilon_recomputed if rows else 0.0, "unit": "window",
                            "entries": [{"round": x.round_id, "epsilon_recomputed": x.epsilon_recomputed,
                                         "epsilon_declared": x.epsilon_declared, "epsilon_round": x.epsilon_round,
                                         "delta": x.delta, "accountant": x.accountant, "steps": len(x.history)}
                                        for x in rows]})
            return out

    def alerts(self) -> list[dict]:
        with self.sessions() as s:
            return [{"id": a.id, "kind": a.kind, "participant": a.participant, "detail": a.detail,
                     "at": _aware(a.at).isoformat()} for a in s.scalars(select(Alert).order_by(Alert.id))]

    # -- custody ---------------------------------------------------------------------------------
    def custodian_status(self) -> dict:
        if self.custodian is not None:
            return {"state": "unsealed", "mode": self.custodian.mode}
        return {"state": "sealed", "threshold": self.sealed.threshold if self.sealed else None,
                "shares_received": len(self._shares)}

    def add_share(self, actor: str, share: str) -> dict:
        return self._audited("custodian.unseal_failed", actor, lambda: self._add_share(actor, share),
                             action="custodian.unseal")

    def _add_share(self, actor: str, share: str) -> dict:
        with self._lock:
            if self.custodian is not None:
                raise Conflict(f"the custodian is already unsealed ({self.custodian.mode})")
            if self.sealed is None:
                raise Conflict("no sealed key set on this server")
            try:
                index, _ = custody.parse_share(share, key_id=self.sealed.key_id)
            except custody.CustodyError as exc:
                raise BadRequest(str(exc)) from exc
            self._shares[index] = (share, actor)
            self.record("custodian.share_received", actor, index=index, received=len(self._shares),
                        threshold=self.sealed.threshold)
            if len(self._shares) < self.sealed.threshold:
                return self.custodian_status()
            shares, holders = [v[0] for v in self._shares.values()], sorted({v[1] for v in self._shares.values()})
            self._shares.clear()
            try:
                self.custodian = Custodian.from_shares(self.sealed, shares)
            except (custody.CustodyError, ckks.CKKSError) as exc:
                raise BadRequest(f"unseal failed, all shares discarded: {exc}") from exc
            self.record("custodian.unsealed", actor, mode=self.custodian.mode, submitted_by=holders)
        self.resume()
        return self.custodian_status()

    # -- models and releases ---------------------------------------------------------------------
    def _model_view(self, m: ModelVersion) -> dict:
        return {"version": m.version, "architecture": m.architecture, "hash": m.hash,
                "created_at": _aware(m.created_at).isoformat(), "round": m.round_id,
                "participants": m.participants, "n_samples": m.n_samples, "status": m.status,
                "metrics": m.metrics, "privacy": m.privacy, "weights": base64.b64encode(m.weights).decode()}

    def get_model(self, version: int | None) -> dict:
        with self.sessions() as s:
            if version is None:
                version = s.scalar(select(func.max(ModelVersion.version)))
            m = s.get(ModelVersion, version)
            if m is None:
                raise NotFound(f"model version {version} does not exist")
            return self._model_view(m)

    def promoted_version(self) -> int:
        with self.sessions() as s:
            return s.scalar(select(ModelVersion.version).where(ModelVersion.status == "promoted"))

    def release(self, version: int) -> dict:
        with self.sessions() as s:
            m = s.get(ModelVersion, version)
            if m is None:
                raise NotFound(f"model version {version} does not exist")
            if m.status not in ("promoted", "retired"):
                raise Conflict(f"model version {version} is {m.status}: only promoted models are released")
            manifest = ReleaseManifest(version=m.version, architecture=m.architecture, model_hash=m.hash,
                                       weights_sha256=hashlib.sha256(m.weights).hexdigest(),
                                       created_at=_aware(m.created_at).isoformat(), round=m.round_id)
            return make_release(manifest, m.weights, self.release_key)

    def release_public_key(self) -> str:
        return public_key_b64(self.release_key)
