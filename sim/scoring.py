"""Scoring a forecast against references: error metrics, clinical accuracy and hypoglycaemia detection."""

from __future__ import annotations

import numpy as np

from federation import error_grids, glycemic, metrics


def score(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Every figure the studies report for one horizon (NaN where a rate is undefined)."""
    pred = np.clip(np.asarray(pred, dtype=np.float64), 0.0, None)  # a negative forecast means zero clinically
    if not np.isfinite(pred).all():  # a diverged model: every figure undefined, not a crash
        return dict.fromkeys(("rmse", "mae", "mard", "hypo_sens", "hypo_spec", "clarke_a", "clarke_ab", "parkes_ab"),
                             float("nan"))
    hypo = glycemic.hypo_detection(ref, pred)
    clarke = error_grids.clarke_fractions(ref, pred)
    return {"rmse": metrics.rmse(pred, ref), "mae": metrics.mae(pred, ref), "mard": metrics.mard(pred, ref),
            "hypo_sens": float("nan") if hypo.sensitivity is None else hypo.sensitivity,
            "hypo_spec": float("nan") if hypo.specificity is None else hypo.specificity,
            "clarke_a": clarke["A"], "clarke_ab": clarke["AB"],
            "parkes_ab": error_grids.parkes_fractions(ref, pred)["AB"]}
