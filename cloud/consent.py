"""Consent withdrawals and retention deletions as a unit of the cloud: participants' signed reports (counts, never
content) in, audit entries and the model cards' consent section out.

A report is signed by the participant's enrolled key over its canonical JSON in `REPORT_DOMAIN`
(`federation.consent`), the way drift reports are: the signature covers the body, which a signed request header
(`federation.request_auth`) does not. A resend with the same report id is acknowledged as a duplicate; the same id
with other content is refused (409). Every accepted report is one audit entry (``consent.withdrawal`` or
``retention.deleted``) whose detail says what was deleted, in counts, and, for a withdrawal, what cannot be undone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud.consent_db import ConsentReportRow
from cloud.errors import BadRequest, Conflict
from cloud.participants import Participants
from cloud.store import Store, aware
from federation.consent import IRREVERSIBLE, REPORT_DOMAIN
from federation.wire import PARTICIPANT_ID

MAX_COUNT = 2**31 - 1
CountName = Literal["readings", "quarantined_messages", "patients", "rows", "windows"]


class ConsentReport(BaseModel):
    """What a gateway or hospital deleted, and why; signed by the participant."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    participant: str = Field(pattern=PARTICIPANT_ID, max_length=64)
    report_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    kind: Literal["withdrawal", "retention"]
    at: float = Field(ge=0, le=4_102_444_800)
    deleted: dict[CountName, int] = Field(max_length=5)
    subject: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$",
                                description="HMAC pseudonym of the withdrawn device or patient (never its id)")
    subject_kind: Literal["device", "patient"] | None = None
    issued_at: int | None = Field(default=None, ge=0, le=4_102_444_800)
    irreversible: str | None = Field(default=None, max_length=1000)
    period_days: float | None = Field(default=None, gt=0, le=36500)
    signature: str = Field(max_length=200)

    def signed_doc(self) -> dict:
        return self.model_dump(mode="json", exclude={"signature"}, exclude_none=True)


class ConsentAck(BaseModel):
    status: Literal["recorded", "duplicate"]
    report_id: str


class ConsentLedger:
    def __init__(self, store: Store, participants: Participants) -> None:
        self.store = store
        self.participants = participants

    def record(self, rep: ConsentReport) -> ConsentAck:
        with self.store.refusals("consent.rejected", rep.participant, action="consent.report"):
            if any(not 0 <= v <= MAX_COUNT for v in rep.deleted.values()):
                raise BadRequest(f"deleted counts must be in [0, {MAX_COUNT}]")
            if rep.kind == "withdrawal" and (rep.subject is None or rep.subject_kind is None):
                raise BadRequest("a withdrawal report names its subject's pseudonym and kind (device or patient)")
            if rep.kind == "retention" and rep.period_days is None:
                raise BadRequest("a retention report names its period (period_days)")
            with self.store.tx() as s:
                self.participants.verified(s, rep.participant, rep.signed_doc(), rep.signature, domain=REPORT_DOMAIN)
                prior = s.scalar(select(ConsentReportRow).where(ConsentReportRow.report_id == rep.report_id))
                if prior is not None:
                    if (prior.participant, prior.kind, prior.subject, prior.deleted) != (
                            rep.participant, rep.kind, rep.subject, dict(rep.deleted)):
                        raise Conflict(f"consent report {rep.report_id} was already received with other content")
                    return ConsentAck(status="duplicate", report_id=rep.report_id)
                s.add(ConsentReportRow(report_id=rep.report_id, participant=rep.participant, kind=rep.kind,
                                       subject=rep.subject, subject_kind=rep.subject_kind, deleted=dict(rep.deleted),
                                       reported_at=rep.at))
                s.flush()
                if rep.kind == "withdrawal":
                    self.store.append(s, "consent.withdrawal", rep.participant, report_id=rep.report_id,
                                      subject=rep.subject, subject_kind=rep.subject_kind, issued_at=rep.issued_at,
                                      deleted=dict(rep.deleted), irreversible=IRREVERSIBLE,
                                      node_statement=rep.irreversible)
                else:
                    self.store.append(s, "retention.deleted", rep.participant, report_id=rep.report_id,
                                      period_days=rep.period_days, deleted=dict(rep.deleted))
                return ConsentAck(status="recorded", report_id=rep.report_id)

    def status(self) -> dict:
        with self.store.read() as s:
            return summary(s, None)


def summary(s: Session, before: datetime | None) -> dict:
    """Withdrawals and retention deletions recorded (all, or those recorded before `before`): counts only."""
    q = select(ConsentReportRow.kind, func.count(), ConsentReportRow.subject_kind).group_by(
        ConsentReportRow.kind, ConsentReportRow.subject_kind)
    if before is not None:
        q = q.where(ConsentReportRow.at < before)
    out: dict = {"withdrawals": {"device": 0, "patient": 0}, "retention_reports": 0}
    for kind, n, subject_kind in s.execute(q):
        if kind == "withdrawal":
            out["withdrawals"][subject_kind] = int(n)
        else:
            out["retention_reports"] += int(n)
    return out


def card_section(s: Session, created_at: datetime) -> dict:
    """The model card's consent section: what withdrawals mean for this model, with the counts up to now."""
    before = summary(s, aware(created_at))
    since = summary(s, None)
    return {"withdrawals_before_training": before["withdrawals"],
            "withdrawals_recorded_to_date": since["withdrawals"],
            "statement": "Data of subjects who withdrew before this model was built was deleted at its node and not "
                         "used. " + IRREVERSIBLE + " A subject who withdrew after this model was built may have "
                         "contributed to it; the next models are trained without them."}
