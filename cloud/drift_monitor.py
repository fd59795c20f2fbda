"""Drift reports as a unit of the cloud: gateways' signed telemetry histograms in, KL scores and alerts out (the
math is `cloud.drift`)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud import drift
from cloud.db import Round
from cloud.errors import BadRequest, Conflict
from cloud.governance_db import DriftReportRow
from cloud.participants import Participants
from cloud.record_db import Alert
from cloud.store import Store, aware
from federation.drift import DRIFT_DOMAIN, DriftReport, check_counts
from federation.errors import SchemaError
from federation.responses import AlertView, DriftAck


class DriftMonitor:
    def __init__(self, store: Store, participants: Participants, config: drift.DriftConfig) -> None:
        self.store = store
        self.participants = participants
        self.config = config

    def record(self, rep: DriftReport) -> DriftAck:
        with self.store.refusals("drift.rejected", rep.participant, action="drift.submit"):
            if rep.t_end < rep.t_start:
                raise BadRequest(f"t_end {rep.t_end} is before t_start {rep.t_start}")
            try:
                counts = check_counts(rep.counts)
            except SchemaError as exc:
                raise BadRequest(str(exc)) from exc
            with self.store.tx() as s:
                self.participants.verified(s, rep.participant, rep.signed_doc(), rep.signature, domain=DRIFT_DOMAIN)
                prior = s.scalar(select(DriftReportRow).where(DriftReportRow.report_id == rep.report_id))
                if prior is not None:
                    if prior.participant != rep.participant or prior.counts != rep.counts:
                        raise Conflict(f"drift report {rep.report_id} was already received with other content")
                    return DriftAck(status="duplicate", kl_nats=prior.kl, alert=prior.alert)
                row = DriftReportRow(participant=rep.participant, report_id=rep.report_id, t_start=rep.t_start,
                                     t_end=rep.t_end, counts=list(rep.counts), n=int(counts.sum()))
                s.add(row)
                s.flush()
                drift.assess(s, row, self.config, self.store.append)
                return DriftAck(status="recorded", kl_nats=row.kl, alert=row.alert,
                                reference_version=row.reference_version, threshold_nats=self.config.threshold)

    def snapshot_baseline(self, s: Session, r: Round) -> None:
        base = drift.snapshot_baseline(s, r)
        if base is not None:
            self.store.append(s, "drift.baseline", "cloud", round=r.id, readings=base.n,
                              participants=base.participants)

    def on_release(self, version: int) -> None:
        """A promotion or rollback changed the reference: score the reports that waited for one."""
        with self.store.tx() as s:
            drift.score_pending(s, self.config, self.store.append)

    def status(self) -> dict:
        with self.store.read() as s:
            return drift.summary(s, self.config)

    def alerts(self) -> list[AlertView]:
        with self.store.read() as s:
            return [AlertView(id=a.id, participant=a.participant, detail=a.detail, at=aware(a.at).isoformat())
                    for a in s.scalars(select(Alert).where(Alert.kind == "drift").order_by(Alert.id))]
