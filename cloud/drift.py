"""Drift of the gateways' telemetry against the distribution the promoted model was trained on.

Gateways send signed histograms (`federation.drift`) of their privatised readings, one per window of reading
time. The training reference of a round is the pooled histogram of the reports of its contributors whose
window ended by the round's data cutoff (all reports received so far when it has none), snapshotted when the
round's model is registered; the reference of a model version is the sum of the snapshots of every round in
its lineage (`cloud.lineage`). Each report with at least `min_readings` readings is scored by
KL(report || reference of the promoted version), once that reference covers `min_reference_hours` of reading
time (a shorter one, e.g. one night, differs from an afternoon by time of day alone); above `threshold` nats
the cloud raises a drift alert (one
per excursion: a participant's alert is raised when it crosses the threshold and cleared when it falls back,
both audited). The default threshold is measured in docs/governance.md (`python -m bench.drift_threshold`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.db import Round
from cloud.governance_db import DriftBaseline, DriftReportRow
from cloud.lineage import lineage
from cloud.record_db import Alert, ModelVersion
from federation.drift import N_BINS, check_counts, kl_divergence

DEFAULT_THRESHOLD = 1.5  # nats: above every no-drift window measured (max 1.19), docs/governance.md
DEFAULT_MIN_READINGS = 200
DEFAULT_MIN_REFERENCE_HOURS = 24.0  # a reference shorter than a day compares times of day, not distributions

Audit = Callable[..., None]


@dataclass(frozen=True)
class DriftConfig:
    threshold: float = DEFAULT_THRESHOLD
    min_readings: int = DEFAULT_MIN_READINGS
    min_reference_hours: float = DEFAULT_MIN_REFERENCE_HOURS


def snapshot_baseline(s: Session, r: Round) -> DriftBaseline | None:
    """Pool the contributors' reports up to the round's data cutoff as this round's training reference."""
    if s.get(DriftBaseline, r.id) is not None:
        return s.get(DriftBaseline, r.id)
    q = select(DriftReportRow).where(DriftReportRow.participant.in_(r.contributors or []))
    if r.data_cutoff is not None:
        q = q.where(DriftReportRow.t_end <= r.data_cutoff)
    rows = s.scalars(q).all()
    if not rows:
        return None
    counts = np.sum([check_counts(x.counts) for x in rows], axis=0)
    base = DriftBaseline(round_id=r.id, counts=[int(c) for c in counts], n=int(counts.sum()),
                         participants=sorted({x.participant for x in rows}),
                         windows=sorted({(x.t_start, x.t_end) for x in rows}))
    s.add(base)
    return base


def covered_seconds(windows: list) -> float:
    """Length of the union of [start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted((float(a), float(b)) for a, b in windows):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def reference(s: Session, version: int) -> tuple[np.ndarray, list[int], float] | None:
    """(pooled training histogram, rounds, hours of reading time covered) of a version's lineage, or None."""
    rounds = lineage(s, version).rounds
    rows = [b for b in (s.get(DriftBaseline, rid) for rid in rounds) if b is not None]
    if not rows:
        return None
    hours = covered_seconds([w for b in rows for w in (b.windows or [])]) / 3600
    return np.sum([np.asarray(b.counts, dtype=np.int64) for b in rows], axis=0), [b.round_id for b in rows], hours


def assess(s: Session, row: DriftReportRow, cfg: DriftConfig, audit: Audit) -> None:
    """Score a stored report against the promoted version's reference; raise or clear the participant's alert."""
    promoted = s.scalar(select(ModelVersion.version).where(ModelVersion.status == "promoted"))
    ref = reference(s, promoted) if promoted is not None else None
    if ref is None or row.n < cfg.min_readings or ref[2] < cfg.min_reference_hours:
        return
    counts, rounds, _hours = ref
    row.reference_version = promoted
    row.kl = kl_divergence(row.counts, [int(c) for c in counts])
    row.alert = row.kl > cfg.threshold
    prev = s.scalar(select(DriftReportRow).where(DriftReportRow.participant == row.participant,
                                                 DriftReportRow.kl.is_not(None), DriftReportRow.id != row.id)
                    .order_by(DriftReportRow.id.desc()).limit(1))
    was = bool(prev is not None and prev.alert)
    detail = {"participant": row.participant, "kl_nats": round(row.kl, 6), "threshold_nats": cfg.threshold,
              "reference_version": promoted, "reference_rounds": rounds, "t_start": row.t_start,
              "t_end": row.t_end, "readings": row.n}
    if row.alert and not was:
        s.add(Alert(kind="drift", participant=row.participant, detail=detail))
        audit(s, "drift.alert", "cloud", **detail)
    elif was and not row.alert:
        audit(s, "drift.cleared", "cloud", **detail)


def score_pending(s: Session, cfg: DriftConfig, audit: Audit) -> int:
    """Score the reports that arrived before the production model had a usable reference and read after its training
    data (they would otherwise never be scored: a report is assessed when it arrives). Returns how many were."""
    promoted = s.scalar(select(ModelVersion.version).where(ModelVersion.status == "promoted"))
    ref = reference(s, promoted) if promoted is not None else None
    if ref is None or ref[2] < cfg.min_reference_hours:
        return 0
    trained_until = max(float(w[1]) for rid in ref[1] for w in (s.get(DriftBaseline, rid).windows or []))
    rows = s.scalars(select(DriftReportRow).where(DriftReportRow.kl.is_(None), DriftReportRow.n >= cfg.min_readings,
                                                  DriftReportRow.t_start >= trained_until)
                     .order_by(DriftReportRow.id)).all()
    for row in rows:
        assess(s, row, cfg, audit)
    return len(rows)


def summary(s: Session, cfg: DriftConfig) -> dict:
    """Per participant: its latest report (`kl_nats` None when it was not scored), the latest report that was
    scored (`scored_kl_nats`, `scored_t_end`; None if none was), how many were, and whether it is in alert."""
    out: dict[str, dict] = {}
    for row in s.scalars(select(DriftReportRow).order_by(DriftReportRow.id)):
        prev = out.get(row.participant, {})
        scored = {"scored_kl_nats": row.kl, "scored_t_end": row.t_end} if row.kl is not None else \
            {k: prev.get(k) for k in ("scored_kl_nats", "scored_t_end")}
        out[row.participant] = {"reports": prev.get("reports", 0) + 1,
                                "scored_reports": prev.get("scored_reports", 0) + (row.kl is not None),
                                "t_start": row.t_start, "t_end": row.t_end, "readings": row.n,
                                "kl_nats": row.kl, "reference_version": row.reference_version,
                                "alert": row.alert, **scored}
    return {"threshold_nats": cfg.threshold, "min_readings": cfg.min_readings,
            "min_reference_hours": cfg.min_reference_hours, "bins": N_BINS, "participants": out}
