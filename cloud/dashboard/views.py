"""Read models for dashboard views that no other route serves: participants with the reason they are halted, rounds
in one list with their gate results by source, alerts with refused submissions and access failures, drift scores over
time, and an on-demand verification of the audit ledger against the cloud's pinned log key (`cloud.audit`).

Every view reads committed rows; the verification is itself audited (``audit.verified``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer

from cloud.audit import LedgerTampered, verify_ledger
from cloud.db import Participant, Round, Update
from cloud.evaluations import EvaluationSources
from cloud.governance_db import DriftReportRow, GateCheck, PendingAction
from cloud.participants import Participants
from cloud.record_db import Alert, Event, PrivacySpend, Refusal
from cloud.round_states import round_view
from cloud.store import Store, aware
from federation import dp_accounting
from federation.responses import AuditEntry, Response, RoundView

HALT_KINDS = ("participant.halted", "participant.resumed", "budget.alert", "config.changed")
REFUSED_KINDS = ("update.rejected", "refusal.rejected", "secagg.rejected", "drift.rejected", "evaluation.rejected",
                 "enrollment.rejected", "round.refused")
ACCESS_KINDS = ("access.denied", "access.locked", "access.failures")
# what participants send: a 401/403 refusal of one is audited as access.denied with one of these actions (cloud.store)
PARTICIPANT_ACTIONS = ("submit", "refuse", "enroll", "drift.submit", "evaluation.submit")
RECENT = 100  # entries of each alert list


def participant_refusal(e: Event | AuditEntry) -> bool:
    """An ``access.denied`` entry that refused something a participant sent (a signature, a cap, a halt)."""
    action = str(e.detail.get("action", ""))
    return e.kind == "access.denied" and (action in PARTICIPANT_ACTIONS or action.startswith("secagg."))


class HaltReason(Response):
    kind: str  # participant.halted (two-person request), budget.alert (cap reached or exceeded), config.changed
    reason: str
    requested_by: str | None = None
    approved_by: str | None = None
    approval: int | None = None
    at: str


class ParticipantStatus(Response):
    id: str
    kind: str
    halted: bool
    halted_reason: HaltReason | None = None
    epsilon_spent: float
    epsilon_cap: float | None
    delta: float | None = None  # of the latest accepted report (None: nothing spent yet)
    accountant: str | None = None
    unit: str
    rounds: int  # accepted updates (privacy ledger rows)
    last_round: int | None = None


class GateCheckView(Response):
    action: str  # approve | promote
    actor: str
    passed: bool
    at: str
    results: list[dict[str, Any]]  # {gate, passed, detail, source}


class RoundSummary(RoundView):
    opened_at: str
    closed_at: str | None = None
    completed_at: str | None = None  # the candidate registered (or the round failed)
    duration_s: float | None = None  # opened -> completed or failed
    updates: list[str] = []
    refusals: dict[str, str] = {}  # participant -> its own signed reason
    metrics_by_source: dict[str, dict[str, float]] = {}
    gate_checks: list[GateCheckView] = []


class DriftPoint(Response):
    t_start: float
    t_end: float
    readings: int
    kl_nats: float | None  # None: not scored (too few readings, or no reference of a day yet)
    alert: bool
    reference_version: int | None
    received_at: str


class DriftHistory(Response):
    threshold_nats: float
    participants: dict[str, list[DriftPoint]]


class AlertsView(Response):
    alerts: list[dict[str, Any]]  # compliance alerts (budget, drift): {id, kind, participant, detail, at}
    refused: list[AuditEntry]  # refused submissions and messages (and their 401/403 access.denied), newest first
    access: list[AuditEntry]  # staff denials, lockouts and counted failures, newest first


class LedgerVerification(Response):
    ok: bool
    entries: int
    checkpoints: int | None = None
    root: str | None = None
    public_key: str  # the cloud's pinned log key the checkpoints were checked against
    first_bad_seq: int | None = None
    error: str | None = None
    seconds: float
    verified_by: str


def _entry(e: Event) -> AuditEntry:
    return AuditEntry(seq=e.seq, at=e.at, kind=e.kind, actor=e.actor, detail=e.detail)


def _recent(s: Session, kinds: tuple[str, ...], limit: int = RECENT) -> list[AuditEntry]:
    rows = s.scalars(select(Event).where(Event.kind.in_(kinds)).order_by(Event.seq.desc()).limit(limit))
    return [_entry(e) for e in rows]


class DashboardViews:
    def __init__(self, store: Store, participants: Participants, evaluations: EvaluationSources, *,
                 drift_threshold: float) -> None:
        self.store = store
        self.participants = participants
        self.evaluations = evaluations
        self.drift_threshold = drift_threshold

    # -- participants ------------------------------------------------------------------------------
    def participant_status(self) -> list[ParticipantStatus]:
        with self.store.read() as s:
            reasons = self._halt_reasons(s)
            out = []
            for p in s.scalars(select(Participant).order_by(Participant.id)):
                last = self.participants.last_spend(s, p.id)
                n = s.scalar(select(func.count()).select_from(PrivacySpend).where(PrivacySpend.participant == p.id))
                out.append(ParticipantStatus(
                    id=p.id, kind=p.kind, halted=p.halted, halted_reason=reasons.get(p.id) if p.halted else None,
                    epsilon_spent=last.epsilon_recomputed if last else 0.0, epsilon_cap=self.participants.cap(p),
                    delta=last.delta if last else None, accountant=last.accountant if last else None,
                    unit=self._unit(s, p.id), rounds=n or 0, last_round=last.round_id if last else None))
            return out

    @staticmethod
    def _unit(s: Session, pid: str) -> str:
        """The privacy unit the participant declared with its latest accepted update (the accountant's default)."""
        env = s.scalar(select(Update.envelope).where(Update.participant == pid).order_by(Update.id.desc()).limit(1))
        return str((env or {}).get("dp", {}).get("unit") or dp_accounting.DEFAULT_UNIT)

    @staticmethod
    def _halt_reasons(s: Session) -> dict[str, HaltReason]:
        """The latest event that halted each participant (a resume clears it)."""
        out: dict[str, HaltReason | None] = {}
        for e in s.scalars(select(Event).where(Event.kind.in_(HALT_KINDS)).order_by(Event.seq)):
            pid, d = e.detail.get("participant"), e.detail
            if not pid:
                continue
            if e.kind == "participant.resumed" or (e.kind == "config.changed" and not d.get("halted")):
                out[pid] = None
                continue
            if e.kind == "participant.halted":
                approval = s.get(PendingAction, d["approval"]) if d.get("approval") is not None else None
                out[pid] = HaltReason(kind=e.kind, reason=str(d.get("reason", "")), requested_by=e.actor,
                                      approved_by=approval.decided_by if approval else None,
                                      approval=d.get("approval"), at=e.at)
            elif e.kind == "budget.alert":
                eps = d.get("epsilon")
                what = (f"privacy cap reached: epsilon {eps:.4g} of cap {d.get('cap')} (delta {d.get('delta')}, "
                        f"per {d.get('unit')}, {d.get('accountant')})" if eps is not None else
                        str(d.get("reason") or f"privacy cap {d.get('cap')} would be passed"))
                out[pid] = HaltReason(kind=f"{e.kind}:{d.get('alert')}", reason=f"round {d.get('round')}: {what}",
                                      at=e.at)
            else:  # a cap lowered to (or below) what was spent
                out[pid] = HaltReason(kind=e.kind, reason=f"cap set to {d.get('effective')} with epsilon "
                                      f"{d.get('spent')} spent", requested_by=e.actor, approval=d.get("approval"),
                                      at=e.at)
        return {k: v for k, v in out.items() if v is not None}

    # -- rounds ------------------------------------------------------------------------------------
    def rounds(self, *, limit: int = 50) -> list[RoundSummary]:
        with self.store.read() as s:
            rows = s.scalars(select(Round).order_by(Round.id.desc()).limit(limit)
                             .options(defer(Round.aggregate))).all()
            ids = [r.id for r in rows]
            ended: dict[int, str] = {}
            for e in s.scalars(select(Event).where(Event.kind == "round.state").order_by(Event.seq)):
                if e.detail.get("round") in ids and e.detail.get("state") in ("completed", "failed"):
                    ended.setdefault(e.detail["round"], e.at)
            updates: dict[int, list[str]] = defaultdict(list)
            for rid, pid in s.execute(select(Update.round_id, Update.participant).where(Update.round_id.in_(ids))
                                      .order_by(Update.participant)):
                updates[rid].append(pid)
            refusals: dict[int, dict[str, str]] = defaultdict(dict)
            for x in s.scalars(select(Refusal).where(Refusal.round_id.in_(ids))):
                refusals[x.round_id][x.participant] = x.reason
            out = []
            for r in rows:
                view = round_view(s, r)
                opened = aware(r.opened_at)
                done = ended.get(r.id)
                duration = None
                if done is not None:
                    duration = max(0.0, (datetime.fromisoformat(done) - opened).total_seconds())
                version = view.result_model_version
                checks = [] if version is None else [
                    GateCheckView(action=c.action, actor=c.actor, passed=c.passed, at=aware(c.at).isoformat(),
                                  results=list(c.results))
                    for c in s.scalars(select(GateCheck).where(GateCheck.model_version == version)
                                       .order_by(GateCheck.id))]
                out.append(RoundSummary(
                    **view.model_dump(), opened_at=opened.isoformat(),
                    closed_at=aware(r.closed_at).isoformat() if r.closed_at else None, completed_at=done,
                    duration_s=duration, updates=updates.get(r.id, []), refusals=refusals.get(r.id, {}),
                    metrics_by_source=self.evaluations.by_source(s, version) if version is not None else {},
                    gate_checks=checks))
            return out

    # -- alerts, drift -----------------------------------------------------------------------------
    def alerts(self) -> AlertsView:
        with self.store.read() as s:
            alerts = [{"id": a.id, "kind": a.kind, "participant": a.participant, "detail": a.detail,
                       "at": aware(a.at).isoformat()}
                      for a in s.scalars(select(Alert).order_by(Alert.id.desc()).limit(RECENT))]
            events = _recent(s, REFUSED_KINDS + ACCESS_KINDS, limit=5 * RECENT)
            refused = [e for e in events if e.kind in REFUSED_KINDS or participant_refusal(e)][:RECENT]
            access = [e for e in events if e.kind in ACCESS_KINDS and not participant_refusal(e)][:RECENT]
            return AlertsView(alerts=alerts, refused=refused, access=access)

    def drift_history(self, *, per_participant: int = 500) -> DriftHistory:
        with self.store.read() as s:
            out: dict[str, list[DriftPoint]] = defaultdict(list)
            for r in s.scalars(select(DriftReportRow).order_by(DriftReportRow.t_end, DriftReportRow.id)):
                out[r.participant].append(DriftPoint(t_start=r.t_start, t_end=r.t_end, readings=r.n, kl_nats=r.kl,
                                                     alert=r.alert, reference_version=r.reference_version,
                                                     received_at=aware(r.at).isoformat()))
            return DriftHistory(threshold_nats=self.drift_threshold,
                                participants={k: v[-per_participant:] for k, v in sorted(out.items())})

    # -- the audit ledger --------------------------------------------------------------------------
    def verify_ledger(self, actor: str) -> LedgerVerification:
        """Recompute the ledger's Merkle tree and check every signed checkpoint against the key this cloud signs
        with (pinned in the database at first start); the result is audited as ``audit.verified``."""
        key = self.store.audit.public_key_b64
        t0 = time.perf_counter()
        try:
            rep = verify_ledger(self.store.sessions, public_key=key)
            out = LedgerVerification(ok=True, entries=rep.entries, checkpoints=rep.checkpoints, root=rep.root_hex,
                                     public_key=key, seconds=0.0, verified_by=actor)
        except LedgerTampered as exc:
            with self.store.read() as s:
                n = s.scalar(select(func.count()).select_from(Event)) or 0
            out = LedgerVerification(ok=False, entries=n, public_key=key, first_bad_seq=exc.seq, error=str(exc),
                                     seconds=0.0, verified_by=actor)
        out.seconds = round(time.perf_counter() - t0, 4)
        self.store.record("audit.verified", actor, ok=out.ok, entries=out.entries, root=out.root,
                          first_bad_seq=out.first_bad_seq, error=out.error)
        return out
