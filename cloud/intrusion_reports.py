"""Containments that nodes carried out and report (``POST /v1/intrusion/reports``): today a gateway's revocation of
a device's broker login after a burst of ACL denials (`gateway.acl_watch`). Each report is signed by the
participant's enrolled key over its body (`federation.node_signals.INTRUSION_REPORT_DOMAIN`), kept by report id
(a resend is a duplicate; the same id with other content is 409), raised as a compliance alert
(``intrusion.<rule>``) and audited as ``intrusion.contained`` with the node as actor, in one transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from cloud.errors import BadRequest, Conflict
from cloud.intrusion_db import NodeIntrusionReport
from cloud.participants import Participants
from cloud.record_db import Alert
from cloud.store import Store
from federation.node_signals import INTRUSION_REPORT_DOMAIN
from federation.wire import PARTICIPANT_ID

MAX_COUNT = 2**31 - 1
WHEN = {"ge": 0, "le": 4_102_444_800}  # unix seconds, up to 2100
Topic = Annotated[str, Field(max_length=256)]
Action = Annotated[str, Field(max_length=500)]


class IntrusionReport(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    participant: str = Field(pattern=PARTICIPANT_ID, max_length=64)
    report_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    rule: Literal["acl_denials"]
    subject: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$",
                         description="what was contained: the broker client id (the device's username)")
    subject_kind: Literal["device"]
    count: int = Field(ge=1, le=MAX_COUNT)
    threshold: int = Field(ge=1, le=MAX_COUNT)
    window_s: float = Field(gt=0, le=86_400)
    first_at: float = Field(**WHEN)  # the node's clock (unix s): the first denial of the burst
    contained_at: float = Field(**WHEN)
    topics: list[Topic] = Field(max_length=5)
    actions: list[Action] = Field(min_length=1, max_length=10)
    signature: str = Field(max_length=200)

    def signed_doc(self) -> dict:
        return self.model_dump(mode="json", exclude={"signature"})


class ReportAck(BaseModel):
    status: Literal["recorded", "duplicate"]
    report_id: str


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


class IntrusionReports:
    def __init__(self, store: Store, participants: Participants) -> None:
        self.store = store
        self.participants = participants

    def record(self, rep: IntrusionReport) -> ReportAck:
        with self.store.refusals("intrusion.report_rejected", rep.participant, report=rep.report_id):
            if rep.contained_at < rep.first_at:
                raise BadRequest("contained_at is before first_at")
            doc = rep.signed_doc()
            with self.store.tx() as s:
                self.participants.verified(s, rep.participant, doc, rep.signature, domain=INTRUSION_REPORT_DOMAIN)
                prior = s.scalar(select(NodeIntrusionReport).where(NodeIntrusionReport.report_id == rep.report_id))
                if prior is not None:
                    if prior.participant != rep.participant or prior.detail != doc:
                        raise Conflict(f"intrusion report {rep.report_id} was already received with other content")
                    return ReportAck(status="duplicate", report_id=rep.report_id)
                s.add(NodeIntrusionReport(report_id=rep.report_id, participant=rep.participant, rule=rep.rule,
                                          subject=rep.subject, detail=doc))
                info = {"rule": rep.rule, "key_kind": rep.subject_kind, "key": rep.subject,
                        "reported_by": rep.participant, "report_id": rep.report_id, "count": rep.count,
                        "threshold": rep.threshold, "window_s": rep.window_s, "actions": rep.actions,
                        "topics": rep.topics, "first_signal_at": _iso(rep.first_at),
                        "contained_at": _iso(rep.contained_at),
                        "detection_seconds": round(rep.contained_at - rep.first_at, 4)}
                s.add(Alert(kind=f"intrusion.{rep.rule}", participant=rep.participant, detail=info))
                self.store.append(s, "intrusion.contained", rep.participant, **info)
        return ReportAck(status="recorded", report_id=rep.report_id)
