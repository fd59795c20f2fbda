"""Round logic of the aggregator: enrollment, the round state machine, encrypted FedAvg, model versions.

Round states: collecting -> aggregating -> decrypting -> completed, or -> failed (with a reason).
A round closes as soon as every expected participant has answered (update or refusal), or at its deadline
if the quorum of accepted updates is met; otherwise it fails cleanly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from cloud.custodian import Custodian
from cloud.db import Event, ModelVersion, Participant, Refusal, Round, Update, utcnow
from cloud.errors import BadRequest, CloudError, Conflict, Forbidden, NotFound, Unauthorized
from federation import ckks, model
from federation.errors import SignatureError
from federation.signing import REFUSAL_DOMAIN, verify
from federation.wire import Enrollment, OpenRound, Submission
from federation.wire import Refusal as RefusalMsg

log = logging.getLogger(__name__)
OPEN_STATES = ("collecting",)


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def model_hash(weights: bytes, created_at: datetime) -> str:
    """H(weights || created_at) as the design fixes it (SHA-256 over the float32 bytes and ISO-8601 time)."""
    return hashlib.sha256(weights + _aware(created_at).isoformat().encode()).hexdigest()


class Federation:
    def __init__(self, sessions: sessionmaker, custodian: Custodian, *, enroll_token: str, model_seed: int = 0):
        self.sessions = sessions
        self.custodian = custodian
        self.public_context = ckks.load_context(custodian.public_context_bytes)
        self._enroll_token = enroll_token
        self._lock = threading.RLock()
        self._ensure_initial_model(model_seed)

    # -- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _audit(s: Session, kind: str, actor: str, /, **detail: object) -> None:
        s.add(Event(kind=kind, actor=actor, detail=detail))

    def _ensure_initial_model(self, seed: int) -> None:
        with self.sessions.begin() as s:
            if s.get(ModelVersion, 0) is None:
                created = utcnow()
                w = model.init_weights(seed=seed).tobytes()
                s.add(ModelVersion(version=0, round_id=None, architecture=model.ARCHITECTURE, weights=w,
                                   hash=model_hash(w, created), created_at=created))
                self._audit(s, "model.initialised", "cloud", version=0, seed=seed)

    # -- enrollment ------------------------------------------------------------------------------
    def _audited(self, kind: str, actor: str, call, **detail: object):  # noqa: ANN001, ANN202
        """Run `call`; a refusal (CloudError) is written to the audit log in its own transaction, then re-raised."""
        try:
            return call()
        except CloudError as exc:
            with self.sessions.begin() as s:
                self._audit(s, "access.denied" if exc.status in (401, 403) else kind, actor,
                            status=exc.status, reason=exc.reason, **detail)
            raise

    def enroll(self, req: Enrollment) -> dict:
        return self._audited("enrollment.rejected", req.participant_id, lambda: self._enroll(req),
                             action="enroll")

    def _enroll(self, req: Enrollment) -> dict:
        if not hmac.compare_digest(req.token.encode(), self._enroll_token.encode()):
            raise Forbidden("enrollment token is not valid")
        try:
            raw = base64.b64decode(req.public_key, validate=True)
        except ValueError as exc:
            raise BadRequest("public_key is not base64") from exc
        if len(raw) != 32:
            raise BadRequest(f"public_key must be 32 raw Ed25519 bytes, got {len(raw)}")
        with self.sessions.begin() as s:
            existing = s.get(Participant, req.participant_id)
            if existing is not None:
                if existing.public_key != req.public_key:
                    raise Conflict(f"participant {req.participant_id} is already enrolled with another key")
                return {"participant_id": existing.id, "status": "already-enrolled"}
            s.add(Participant(id=req.participant_id, kind=req.kind, public_key=req.public_key))
            self._audit(s, "participant.enrolled", req.participant_id, kind=req.kind)
        return {"participant_id": req.participant_id, "status": "enrolled"}

    def participants(self) -> list[dict]:
        with self.sessions() as s:
            rows = s.scalars(select(Participant).order_by(Participant.id)).all()
            return [{"id": p.id, "kind": p.kind} for p in rows]

    # -- rounds ----------------------------------------------------------------------------------
    def open_round(self, req: OpenRound, *, actor: str) -> dict:
        with self._lock, self.sessions.begin() as s:
            busy = s.scalar(select(Round).where(Round.state.in_(OPEN_STATES)))
            if busy is not None:
                raise Conflict(f"round {busy.id} is still {busy.state}")
            expected = [p.id for p in s.scalars(select(Participant).order_by(Participant.id))]
            if len(expected) < req.quorum:
                raise Conflict(f"quorum {req.quorum} exceeds the {len(expected)} enrolled participants")
            base = s.scalar(select(func.max(ModelVersion.version)))
            rnd = Round(state="collecting", quorum=req.quorum, expected=expected, base_model_version=base,
                        local_epochs=req.local_epochs, data_cutoff=req.data_cutoff,
                        deadline_at=utcnow() + timedelta(seconds=req.deadline_s))
            s.add(rnd)
            s.flush()
            self._audit(s, "round.opened", actor, round=rnd.id, quorum=req.quorum, expected=expected,
                        base_model_version=base)
            return self._round_view(rnd)

    @staticmethod
    def _round_view(r: Round) -> dict:
        return {"round": r.id, "state": r.state, "quorum": r.quorum, "expected": r.expected,
                "base_model_version": r.base_model_version, "local_epochs": r.local_epochs,
                "data_cutoff": r.data_cutoff, "deadline_at": _aware(r.deadline_at).isoformat(),
                "result_model_version": r.result_model_version, "failure_reason": r.failure_reason}

    def current_round(self) -> dict:
        with self.sessions() as s:
            r = s.scalar(select(Round).order_by(Round.id.desc()).limit(1))
            if r is None:
                raise NotFound("no round has been opened yet")
            return self._round_view(r)

    def round_report(self, round_id: int) -> dict:
        with self.sessions() as s:
            r = s.get(Round, round_id)
            if r is None:
                raise NotFound(f"round {round_id} does not exist")
            view = self._round_view(r)
            ups = s.scalars(select(Update).where(Update.round_id == round_id).order_by(Update.participant)).all()
            view["updates"] = [{"participant": u.participant, "n_samples": u.n_samples,
                                "dp": u.envelope["dp"], "bytes": u.bytes_received,
                                "ciphertext_sha256": u.ciphertext_sha256} for u in ups]
            refs = s.scalars(select(Refusal).where(Refusal.round_id == round_id)).all()
            view["refusals"] = [{"participant": x.participant, "reason": x.reason} for x in refs]
            return view

    def _collecting(self, s: Session, round_id: int) -> Round:
        r = s.get(Round, round_id)
        if r is None:
            raise NotFound(f"round {round_id} does not exist")
        if r.state != "collecting":
            raise Conflict(f"round {round_id} is not collecting (state: {r.state})")
        if utcnow() > _aware(r.deadline_at):
            raise Conflict(f"round {round_id} passed its deadline; the submission is late")
        return r

    def submit(self, round_id: int, sub: Submission, *, body_bytes: int) -> dict:
        return self._audited("update.rejected", sub.envelope.participant,
                             lambda: self._submit(round_id, sub, body_bytes=body_bytes), action="submit",
                             round=round_id)

    def _submit(self, round_id: int, sub: Submission, *, body_bytes: int) -> dict:
        env = sub.envelope
        if env.round != round_id:
            raise BadRequest(f"envelope is for round {env.round}, posted to round {round_id}")
        try:
            ciphertext = base64.b64decode(sub.ciphertext, validate=True)
        except ValueError as exc:
            raise BadRequest("ciphertext is not base64") from exc
        with self._lock, self.sessions.begin() as s:
            p = s.get(Participant, env.participant)
            if p is None:
                raise Forbidden(f"participant {env.participant} is not enrolled")
            try:
                verify(p.public_key, env.model_dump(mode="json"), sub.signature)
            except SignatureError as exc:
                raise Unauthorized(str(exc)) from exc
            digest = hashlib.sha256(ciphertext).hexdigest()
            if digest != env.ciphertext_sha256:
                raise BadRequest(f"ciphertext sha256 {digest} does not match the signed {env.ciphertext_sha256}")
            prior = s.scalar(select(Update).where(Update.round_id == round_id,
                                                  Update.participant == env.participant))
            if prior is not None:
                if prior.idempotency_key == env.idempotency_key and prior.ciphertext_sha256 == digest:
                    return {"status": "accepted", "duplicate": True, "round": round_id}
                raise Conflict(f"participant {env.participant} already submitted to round {round_id}")
            r = self._collecting(s, round_id)
            if env.participant not in r.expected:
                raise Conflict(f"participant {env.participant} was not enrolled when round {round_id} opened")
            if env.base_model_version != r.base_model_version:
                raise Conflict(f"update is based on model {env.base_model_version}, "
                               f"round {round_id} trains model {r.base_model_version}")
            try:
                n = ckks.check(self.public_context, ciphertext)
            except ckks.CKKSError as exc:
                raise BadRequest(str(exc)) from exc
            if n != model.N_PARAMS:
                raise BadRequest(f"update has {n} values, {model.ARCHITECTURE} has {model.N_PARAMS}")
            s.add(Update(round_id=round_id, participant=env.participant, n_samples=env.n_samples,
                         envelope=env.model_dump(mode="json"), signature=sub.signature, ciphertext=ciphertext,
                         ciphertext_sha256=digest, idempotency_key=env.idempotency_key,
                         bytes_received=body_bytes))
            self._audit(s, "update.accepted", env.participant, round=round_id, ciphertext_sha256=digest,
                        n_samples=env.n_samples, epsilon=env.dp.epsilon_cumulative, delta=env.dp.delta,
                        unit=env.dp.unit, accountant=env.dp.accountant)
        self._maybe_close(round_id)
        return {"status": "accepted", "duplicate": False, "round": round_id}

    def refuse(self, round_id: int, msg: RefusalMsg) -> dict:
        return self._audited("refusal.rejected", msg.participant, lambda: self._refuse(round_id, msg),
                             action="refuse", round=round_id)

    def _refuse(self, round_id: int, msg: RefusalMsg) -> dict:
        if msg.round != round_id:
            raise BadRequest(f"refusal is for round {msg.round}, posted to round {round_id}")
        with self._lock, self.sessions.begin() as s:
            p = s.get(Participant, msg.participant)
            if p is None:
                raise Forbidden(f"participant {msg.participant} is not enrolled")
            doc = msg.model_dump(mode="json", exclude={"signature"})
            try:
                verify(p.public_key, doc, msg.signature, domain=REFUSAL_DOMAIN)
            except SignatureError as exc:
                raise Unauthorized(str(exc)) from exc
            self._collecting(s, round_id)
            if s.scalar(select(Refusal).where(Refusal.round_id == round_id,
                                              Refusal.participant == msg.participant)) is None:
                s.add(Refusal(round_id=round_id, participant=msg.participant, reason=msg.reason))
                self._audit(s, "round.refused", msg.participant, round=round_id, reason=msg.reason)
        self._maybe_close(round_id)
        return {"status": "refusal-recorded", "round": round_id}

    # -- closing ---------------------------------------------------------------------------------
    def _maybe_close(self, round_id: int, *, deadline_passed: bool = False) -> None:
        with self._lock:
            with self.sessions() as s:
                r = s.get(Round, round_id)
                if r is None or r.state != "collecting":
                    return
                accepted = [u.participant for u in s.scalars(select(Update).where(Update.round_id == round_id))]
                refused = [x.participant for x in s.scalars(select(Refusal).where(Refusal.round_id == round_id))]
                everyone = set(accepted) | set(refused) >= set(r.expected)
                quorum = r.quorum
            if not (everyone or deadline_passed):
                return
            if len(accepted) < quorum:
                self._fail(round_id, f"quorum not met: {len(accepted)} accepted updates, quorum {quorum}")
                return
            try:
                self._aggregate(round_id)
            except Exception as exc:  # a failed aggregation fails the round, never the server
                log.exception("aggregation of round %s failed", round_id)
                self._fail(round_id, f"aggregation failed: {exc}")

    def _set_state(self, round_id: int, state: str, **fields: object) -> None:
        with self.sessions.begin() as s:
            r = s.get(Round, round_id)
            r.state = state
            for k, v in fields.items():
                setattr(r, k, v)
            self._audit(s, "round.state", "cloud", round=round_id, state=state)

    def _fail(self, round_id: int, reason: str) -> None:
        log.warning("round %s failed: %s", round_id, reason)
        self._set_state(round_id, "failed", failure_reason=reason, closed_at=utcnow())

    def _aggregate(self, round_id: int) -> None:
        self._set_state(round_id, "aggregating")
        with self.sessions() as s:
            r = s.get(Round, round_id)
            ups = s.scalars(select(Update).where(Update.round_id == round_id).order_by(Update.participant)).all()
            base = s.get(ModelVersion, r.base_model_version)
            blobs = [u.ciphertext for u in ups]
            contributors = [u.participant for u in ups]
            total = sum(u.n_samples for u in ups)
            base_weights = np.frombuffer(base.weights, dtype=np.float32)
            quorum = r.quorum
        summed = ckks.sum_encrypted(self.public_context, blobs)
        self._set_state(round_id, "decrypting")
        weighted_delta = self.custodian.decrypt_aggregate(summed, contributors=contributors, quorum=quorum)
        new_weights = (base_weights + weighted_delta / total).astype(np.float32)
        with self.sessions.begin() as s:
            self._audit(s, "aggregate.decrypted", "custodian", round=round_id, contributors=contributors,
                        custodian_mode=self.custodian.mode,
                        aggregate_sha256=hashlib.sha256(summed).hexdigest())
            version = (s.scalar(select(func.max(ModelVersion.version))) or 0) + 1
            created = utcnow()
            w = new_weights.tobytes()
            s.add(ModelVersion(version=version, round_id=round_id, architecture=model.ARCHITECTURE, weights=w,
                               hash=model_hash(w, created), created_at=created, participants=contributors,
                               n_samples=total))
            r = s.get(Round, round_id)
            r.state, r.result_model_version, r.closed_at = "completed", version, created
            self._audit(s, "round.state", "cloud", round=round_id, state="completed", model_version=version)
        log.info("round %s completed: model v%s from %s", round_id, version, contributors)

    def tick(self) -> None:
        """Close rounds whose deadline has passed (called periodically)."""
        with self.sessions() as s:
            due = [r.id for r in s.scalars(select(Round).where(Round.state == "collecting"))
                   if utcnow() > _aware(r.deadline_at)]
        for rid in due:
            self._maybe_close(rid, deadline_passed=True)

    # -- models ----------------------------------------------------------------------------------
    def get_model(self, version: int | None) -> dict:
        with self.sessions() as s:
            if version is None:
                version = s.scalar(select(func.max(ModelVersion.version)))
            m = s.get(ModelVersion, version)
            if m is None:
                raise NotFound(f"model version {version} does not exist")
            return {"version": m.version, "architecture": m.architecture, "hash": m.hash,
                    "created_at": _aware(m.created_at).isoformat(), "round": m.round_id,
                    "participants": m.participants, "n_samples": m.n_samples,
                    "weights": base64.b64encode(m.weights).decode()}
