"""Held-out evaluation: forecasts scored on virtual patients never seen in training, against CGM and true BG."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from federation import metrics, model
from federation.clock import DEFAULT_SIM_START
from federation.windows import make_windows
from sim.patients import heldout_patients
from sim.scoring import score

HORIZONS = (30, 60)


@dataclass(frozen=True)
class HeldOut:
    x: np.ndarray  # (n, 24) clean CGM history, mg/dL
    y_cgm: np.ndarray  # (n, 2) CGM at +30 and +60 min
    y_bg: np.ndarray  # (n, 2) true blood glucose at +30 and +60 min
    groups: np.ndarray  # (n,) age group of each window's patient
    patients: int


def windows_with_bg(cgm: np.ndarray, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows on the CGM trace, with the true-BG targets of the same windows."""
    x, y = make_windows(cgm)
    _, y_bg = make_windows(np.where(np.isnan(cgm), np.nan, bg))
    return x, y, y_bg


def heldout_set(*, source: str, patients: int, days: float, seed: int, sensor: str = "dexcom-g7") -> HeldOut:
    pats = heldout_patients(source, patients, days=days, seed=seed, start=DEFAULT_SIM_START, sensor=sensor)
    parts = [(*windows_with_bg(p.cgm, p.bg), p.group) for p in pats]
    return HeldOut(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                   np.concatenate([p[2] for p in parts]),
                   np.concatenate([np.full(len(p[0]), p[3]) for p in parts]), len(pats))


def score_forecast(pred: np.ndarray, data: HeldOut) -> dict[str, float]:
    """Scores at +30/+60 against CGM (`rmse30`) and true BG (`bg_rmse30`), and RMSE per age group."""
    out: dict[str, float] = {}
    for j, minutes in enumerate(HORIZONS):
        for prefix, ref in (("", data.y_cgm), ("bg_", data.y_bg)):
            for k, v in score(pred[:, j], ref[:, j]).items():
                out[f"{prefix}{k}{minutes}"] = v
        for group in np.unique(data.groups):
            m = data.groups == group
            out[f"{group}_rmse{minutes}"] = metrics.rmse(pred[m, j], data.y_cgm[m, j])
    return out


def evaluate(weights: np.ndarray, data: HeldOut) -> dict[str, float]:
    """The model's scores, with the persistence baseline's RMSE beside them (`persistence_rmse30`)."""
    out = score_forecast(model.predict(weights, data.x), data)
    base = metrics.persistence(data.x, len(HORIZONS))
    for j, minutes in enumerate(HORIZONS):
        out[f"persistence_rmse{minutes}"] = metrics.rmse(base[:, j], data.y_cgm[:, j])
    return out


def clarke_points(weights: np.ndarray, data: HeldOut, *, max_points: int = 3000, seed: int = 0) -> dict:
    """+30 min forecasts against true blood glucose, for the report's Clarke grid (a fixed-seed sample)."""
    pred = model.predict(weights, data.x)[:, 0]
    ref = data.y_bg[:, 0]
    keep = np.flatnonzero(np.isfinite(pred) & np.isfinite(ref))
    if len(keep) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(keep, max_points, replace=False))
    return {"horizon_min": HORIZONS[0], "reference": np.round(ref[keep], 1).tolist(),
            "prediction": np.round(pred[keep], 1).tolist()}
