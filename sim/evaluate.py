"""Held-out evaluation: forecast accuracy of a model version on virtual patients never seen in training."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from device.sensor import synthetic_trace
from federation import metrics, model
from federation.windows import make_windows


@dataclass(frozen=True)
class EvalSet:
    x: np.ndarray  # (n, 24) CGM history, mg/dL
    y: np.ndarray  # (n, 2) CGM at +30 and +60 min
    patients: int


def heldout_set(*, seed: int, patients: int, days: float, start: int) -> EvalSet:
    """Windows from `patients` fresh virtual patients (names no training node uses), clean CGM."""
    xs, ys = [], []
    for k in range(patients):
        _t, _bg, cgm = synthetic_trace(seed=seed, patient=f"heldout-{k:03d}", start=start, days=days)
        x, y = make_windows(cgm)
        xs.append(x)
        ys.append(y)
    return EvalSet(np.concatenate(xs), np.concatenate(ys), patients)


def evaluate(weights: np.ndarray, data: EvalSet) -> dict[str, float]:
    pred = model.predict(weights, data.x)
    base = metrics.persistence(data.x, pred.shape[1])
    out = {}
    for j, minutes in enumerate((30, 60)):
        out[f"rmse{minutes}"] = metrics.rmse(pred[:, j], data.y[:, j])
        out[f"mae{minutes}"] = metrics.mae(pred[:, j], data.y[:, j])
        out[f"persistence_rmse{minutes}"] = metrics.rmse(base[:, j], data.y[:, j])
    return out
