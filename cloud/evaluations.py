"""Evaluation sources of a model version, which the promotion gates read.

``posted``: a data scientist's held-out scores (POST /v1/rounds/{id}/metrics). ``federated``: scores hospitals
computed on their own held-out patients and signed; pooled with `federation.evaluation.pool` (the cloud never sees
their data). ``validation``: the cloud's own scores on the synthetic validation set of ``cloud serve --validation``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.errors import BadRequest, Conflict, NotFound
from cloud.governance_db import Evaluation
from cloud.participants import Participants
from cloud.record_db import ModelVersion
from cloud.registry import Registry
from cloud.store import Store, aware
from federation import evaluation
from federation.errors import SchemaError
from federation.evaluation import EVALUATION_DOMAIN, EvaluationReport
from federation.responses import EvaluationAck, EvaluationRecord, Evaluations

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationSet:
    x: np.ndarray
    y: np.ndarray
    meta: dict
    groups: np.ndarray | None = None  # age group per window: per-group scores for the fairness gates

    @classmethod
    def load(cls, path: str) -> ValidationSet:
        x, y, meta, groups = evaluation.load_validation_set_groups(path)
        meta = {**meta, "file": str(path), "windows": len(x)}
        if groups is not None:
            meta["windows_per_group"] = {g: int((groups == g).sum()) for g in evaluation.AGE_GROUPS}
        return cls(x, y, meta, groups)


def _upsert(s: Session, version: int, source: str, reporter: str, metrics: dict, signature: str | None = None) -> bool:
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


class EvaluationSources:
    def __init__(self, store: Store, participants: Participants, *, validation: ValidationSet | None = None) -> None:
        self.store = store
        self.participants = participants
        self.validation = validation

    @staticmethod
    def by_source(s: Session, version: int) -> dict[str, dict[str, float]]:
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

    def list(self, version: int) -> Evaluations:
        with self.store.read() as s:
            if s.get(ModelVersion, version) is None:
                raise NotFound(f"model version {version} does not exist")
            rows = s.scalars(select(Evaluation).where(Evaluation.model_version == version)
                             .order_by(Evaluation.id)).all()
            return Evaluations(version=version, by_source=self.by_source(s, version),
                               reports=[EvaluationRecord(source=r.source, reporter=r.reporter, metrics=r.metrics,
                                                         at=aware(r.at).isoformat()) for r in rows])

    def record_federated(self, version: int, rep: EvaluationReport) -> EvaluationAck:
        with self.store.refusals("evaluation.rejected", rep.participant, action="evaluation.submit",
                                 model_version=version):
            if rep.model_version != version:
                raise BadRequest(f"report is for model version {rep.model_version}, posted to {version}")
            with self.store.tx() as s:
                self.participants.verified(s, rep.participant, rep.signed_doc(), rep.signature,
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
                new = _upsert(s, version, "federated", rep.participant, rep.metrics, rep.signature)
                if new:
                    self.store.append(s, "evaluation.federated", rep.participant, model_version=version,
                                      metrics=rep.metrics)
        return EvaluationAck(status="recorded" if new else "duplicate", model_version=version)

    @staticmethod
    def record_posted(s: Session, version: int, actor: str, metrics: dict) -> None:
        _upsert(s, version, "posted", actor, metrics)

    def score_on_validation(self, weights: np.ndarray) -> dict | None:
        """Scores of `weights` on the cloud's validation set; None without a set (or for diverged weights)."""
        if self.validation is None:
            return None
        try:
            return evaluation.score_windows(weights, self.validation.x, self.validation.y,
                                            groups=self.validation.groups)
        except SchemaError as exc:
            log.warning("validation scoring failed: %s", exc)
            return None

    def store_validation(self, s: Session, version: int, scores: dict | None) -> None:
        if self.validation is None:
            return
        if scores is None:
            self.store.append(s, "evaluation.validation_failed", "cloud", model_version=version)
            return
        _upsert(s, version, "validation", "cloud", scores)
        self.store.append(s, "evaluation.validation", "cloud", model_version=version, metrics=scores,
                          validation_set=self.validation.meta)

    def validate_all(self) -> None:
        """Score every live version that lacks the cloud's validation scores (start-up)."""
        if self.validation is None:
            return
        with self.store.read() as s:
            versions = list(s.scalars(select(ModelVersion.version).where(
                ModelVersion.status.in_(("candidate", "promoted")))))
        for version in versions:
            with self.store.read() as s:
                m = s.get(ModelVersion, version)
                if s.scalar(select(Evaluation).where(Evaluation.model_version == version,
                                                     Evaluation.source == "validation")):
                    continue
                scores = self.score_on_validation(Registry.weights(m))
            with self.store.tx() as s:
                self.store_validation(s, version, scores)
