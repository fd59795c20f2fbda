"""Evaluation sources, gate checks, model cards and drift for `cloud.service.Federation` (a mixin).

Metric sources of a model version: ``posted`` (a data scientist's held-out scores, POST
/v1/rounds/{id}/metrics), ``federated`` (scores hospitals computed on their own held-out patients and signed;
pooled with `federation.evaluation.pool`; the cloud never sees their data), ``validation`` (the cloud's own
scores on the synthetic validation set given by ``cloud serve --validation``). Gates (`cloud.gates`) run on
all of them at approval and at promotion; every check is stored (`GateCheck`) and audited.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cloud import drift, gates, model_card
from cloud.db import Alert, ModelVersion, PrivacySpend, Round
from cloud.errors import BadRequest, Conflict, NotFound
from cloud.governance_db import DriftReportRow, Evaluation, GateCheck
from cloud.lineage import lineage
from federation import evaluation
from federation.drift import DRIFT_DOMAIN, DriftReport, check_counts
from federation.errors import SchemaError
from federation.evaluation import EVALUATION_DOMAIN, EvaluationReport

log = logging.getLogger(__name__)


def _iso(ts: datetime) -> str:
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).isoformat()


@dataclass(frozen=True)
class ValidationSet:
    x: np.ndarray
    y: np.ndarray
    meta: dict

    @classmethod
    def load(cls, path: str) -> ValidationSet:
        x, y, meta = evaluation.load_validation_set(path)
        return cls(x, y, {**meta, "file": str(path), "windows": len(x)})


class GovernanceMixin:
    """Needs from its host (Federation): `sessions`, `_tx()`, `_audit(s, kind, actor, **detail)`,
    `_audited(kind, actor, call, **detail)`, `gate_config`, `drift_config`, `validation`."""

    sessions: sessionmaker
    gate_config: gates.GateConfig
    drift_config: drift.DriftConfig
    validation: ValidationSet | None

    # -- evaluations -----------------------------------------------------------------------------
    @staticmethod
    def _upsert_evaluation(s: Session, version: int, source: str, reporter: str, metrics: dict,
                           signature: str | None = None) -> bool:
        """Store one source's scores; False if the identical scores were already stored (a resend)."""
        row = s.scalar(select(Evaluation).where(Evaluation.model_version == version, Evaluation.source == source,
                                                Evaluation.reporter == reporter))
        if row is not None and row.metrics == metrics:
            return False
        if row is None:
            s.add(Evaluation(model_version=version, source=source, reporter=reporter, metrics=dict(metrics),
                             signature=signature))
        else:
            row.metrics, row.signature = dict(metrics), signature
        return True

    def metrics_by_source(self, s: Session, version: int) -> dict[str, dict[str, float]]:
        """source -> metrics of a version (federated: pooled over sites; posted: the latest post)."""
        rows = s.scalars(select(Evaluation).where(Evaluation.model_version == version).order_by(Evaluation.id)).all()
        out: dict[str, dict[str, float]] = {}
        posted = [r for r in rows if r.source == "posted"]
        m = s.get(ModelVersion, version)
        if posted:
            out["posted"] = dict(max(posted, key=lambda r: (r.at, r.id)).metrics)
        elif m is not None and m.metrics:  # a database from before evaluation sources were recorded
            out["posted"] = dict(m.metrics)
        fed = evaluation.pool([r.metrics for r in rows if r.source == "federated"])
        if fed:
            out["federated"] = fed
        val = [r for r in rows if r.source == "validation"]
        if val:
            out["validation"] = dict(val[-1].metrics)
        return out

    def evaluations(self, version: int) -> dict:
        with self.sessions() as s:
            if s.get(ModelVersion, version) is None:
                raise NotFound(f"model version {version} does not exist")
            rows = s.scalars(select(Evaluation).where(Evaluation.model_version == version)
                             .order_by(Evaluation.id)).all()
            return {"version": version, "by_source": self.metrics_by_source(s, version),
                    "reports": [{"source": r.source, "reporter": r.reporter, "metrics": r.metrics,
                                 "at": _iso(r.at)} for r in rows]}

    def record_federated_evaluation(self, version: int, rep: EvaluationReport) -> dict:
        return self._audited("evaluation.rejected", rep.participant,
                             lambda: self._record_federated(version, rep), action="evaluation.submit",
                             model_version=version)

    def _record_federated(self, version: int, rep: EvaluationReport) -> dict:
        if rep.model_version != version:
            raise BadRequest(f"report is for model version {rep.model_version}, posted to {version}")
        with self._tx() as s:
            self._verified_participant(s, rep.participant, rep.signed_doc(), rep.signature,
                                       domain=EVALUATION_DOMAIN)
            m = s.get(ModelVersion, version)
            if m is None:
                raise NotFound(f"model version {version} does not exist")
            if rep.model_hash != m.hash:
                raise Conflict(f"report scores weights {rep.model_hash[:12]}..., version {version} is "
                               f"{m.hash[:12]}...")
            if m.status in ("rejected", "rolled_back"):
                raise Conflict(f"model version {version} is {m.status}: no longer evaluated")
            if rep.metrics.get("n_windows", 0) < evaluation.MIN_WINDOWS or "rmse30" not in rep.metrics:
                raise BadRequest(f"a federated evaluation needs rmse30 and n_windows >= {evaluation.MIN_WINDOWS}")
            new = self._upsert_evaluation(s, version, "federated", rep.participant, rep.metrics, rep.signature)
            if new:
                self._audit(s, "evaluation.federated", rep.participant, model_version=version,
                            metrics=rep.metrics)
        return {"status": "recorded" if new else "duplicate", "model_version": version}

    def record_posted(self, s: Session, version: int, actor: str, metrics: dict) -> None:
        self._upsert_evaluation(s, version, "posted", actor, metrics)

    def score_on_validation(self, weights: np.ndarray) -> dict | None:
        """Scores of `weights` on the cloud's validation set; None without a set (or for diverged weights)."""
        if self.validation is None:
            return None
        try:
            return evaluation.score_windows(weights, self.validation.x, self.validation.y)
        except SchemaError as exc:
            log.warning("validation scoring failed: %s", exc)
            return None

    def store_validation(self, s: Session, version: int, scores: dict | None) -> None:
        if self.validation is None:
            return
        if scores is None:
            self._audit(s, "evaluation.validation_failed", "cloud", model_version=version)
            return
        self._upsert_evaluation(s, version, "validation", "cloud", scores)
        self._audit(s, "evaluation.validation", "cloud", model_version=version, metrics=scores,
                    validation_set=self.validation.meta)

    def validate_version(self, version: int) -> None:
        """Score a stored version on the validation set once (start-up, for versions that lack it)."""
        if self.validation is None:
            return
        with self.sessions() as s:
            m = s.get(ModelVersion, version)
            if m is None or s.scalar(select(Evaluation).where(Evaluation.model_version == version,
                                                              Evaluation.source == "validation")):
                return
            scores = self.score_on_validation(np.frombuffer(m.weights, dtype=np.float32))
        with self._tx() as s:
            self.store_validation(s, version, scores)

    def validate_all(self) -> None:
        with self.sessions() as s:
            versions = list(s.scalars(select(ModelVersion.version).where(
                ModelVersion.status.in_(("candidate", "promoted")))))
        for v in versions:
            self.validate_version(v)

    # -- gates -----------------------------------------------------------------------------------
    def check_gates(self, s: Session, r: Round, m: ModelVersion) -> list[gates.GateResult]:
        promoted = s.scalar(select(ModelVersion).where(ModelVersion.status == "promoted"))
        over_cap = []
        for sp in s.scalars(select(PrivacySpend).where(PrivacySpend.round_id == r.id)):
            if sp.cap is not None and sp.epsilon_recomputed > sp.cap:
                over_cap.append(f"{sp.participant} spent epsilon {sp.epsilon_recomputed:.4f} > cap {sp.cap} "
                                f"(delta {sp.delta}, per window, {sp.accountant})")
        lin = lineage(s, m.version)
        cand = gates.Candidate(version=m.version, metrics=self.metrics_by_source(s, m.version),
                               promoted_version=promoted.version if promoted is not None else None,
                               promoted_metrics=self.metrics_by_source(s, promoted.version) if promoted else {},
                               lineage_epsilon=lin.epsilon_sum, lineage_rounds=lin.rounds, over_cap=tuple(over_cap))
        return gates.check(self.gate_config, cand)

    def _record_gates(self, s: Session, version: int, action: str, actor: str,
                      results: list[gates.GateResult]) -> list[gates.GateResult]:
        failed = gates.failures(results)
        s.add(GateCheck(model_version=version, action=action, actor=actor, passed=not failed,
                        results=[x.as_dict() for x in results], config=self.gate_config.as_dict()))
        self._audit(s, "gates.checked", actor, model_version=version, action=action, passed=not failed,
                    failed=[x.gate + (f"({x.source})" if x.source else "") for x in failed],
                    reasons=[x.message for x in failed])
        return failed

    # -- model cards and listing -------------------------------------------------------------------
    def models(self) -> list[dict]:
        with self.sessions() as s:
            return [{"version": m.version, "status": m.status, "round": m.round_id, "hash": m.hash,
                     "created_at": _iso(m.created_at), "participants": m.participants,
                     "replaced_version": m.replaced_version}
                    for m in s.scalars(select(ModelVersion).order_by(ModelVersion.version))]

    def model_card(self, version: int) -> dict:
        with self.sessions() as s:
            m = s.get(ModelVersion, version)
            if m is None:
                raise NotFound(f"model version {version} does not exist")
            r = s.get(Round, m.round_id) if m.round_id is not None else None
            check = s.scalar(select(GateCheck).where(GateCheck.model_version == version)
                             .order_by(GateCheck.id.desc()).limit(1))
            return model_card.build(model=m, round_=r, lineage=lineage(s, version),
                                    metrics=self.metrics_by_source(s, version), gate_check=check,
                                    gate_config=self.gate_config, validation=self.validation.meta
                                    if self.validation else None)

    # -- drift -----------------------------------------------------------------------------------
    def record_drift(self, rep: DriftReport) -> dict:
        return self._audited("drift.rejected", rep.participant, lambda: self._record_drift(rep),
                             action="drift.submit")

    def _record_drift(self, rep: DriftReport) -> dict:
        if rep.t_end < rep.t_start:
            raise BadRequest(f"t_end {rep.t_end} is before t_start {rep.t_start}")
        try:
            counts = check_counts(rep.counts)
        except SchemaError as exc:
            raise BadRequest(str(exc)) from exc
        with self._tx() as s:
            self._verified_participant(s, rep.participant, rep.signed_doc(), rep.signature, domain=DRIFT_DOMAIN)
            prior = s.scalar(select(DriftReportRow).where(DriftReportRow.report_id == rep.report_id))
            if prior is not None:
                if prior.participant != rep.participant or prior.counts != rep.counts:
                    raise Conflict(f"drift report {rep.report_id} was already received with other content")
                return {"status": "duplicate", "kl_nats": prior.kl, "alert": prior.alert}
            row = DriftReportRow(participant=rep.participant, report_id=rep.report_id, t_start=rep.t_start,
                                 t_end=rep.t_end, counts=list(rep.counts), n=int(counts.sum()))
            s.add(row)
            s.flush()
            drift.assess(s, row, self.drift_config, self._audit)
            return {"status": "recorded", "kl_nats": row.kl, "alert": row.alert,
                    "reference_version": row.reference_version, "threshold_nats": self.drift_config.threshold}

    def snapshot_drift_baseline(self, s: Session, r: Round) -> None:
        base = drift.snapshot_baseline(s, r)
        if base is not None:
            self._audit(s, "drift.baseline", "cloud", round=r.id, readings=base.n, participants=base.participants)

    def drift_status(self) -> dict:
        with self.sessions() as s:
            return drift.summary(s, self.drift_config)

    def drift_alerts(self) -> list[dict]:
        with self.sessions() as s:
            return [{"id": a.id, "participant": a.participant, "detail": a.detail, "at": _iso(a.at)}
                    for a in s.scalars(select(Alert).where(Alert.kind == "drift").order_by(Alert.id))]
