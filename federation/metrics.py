"""Forecast metrics and baselines shared by every tier (glucose in mg/dL)."""

from __future__ import annotations

import numpy as np


def rmse(pred: np.ndarray, target: np.ndarray) -> float:
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    return float(np.sqrt(np.mean((pred - target) ** 2)))


def mae(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(pred, dtype=np.float64) - np.asarray(target, dtype=np.float64))))


def mard(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean absolute relative difference, in percent of the reference (pairs with a reference <= 0 mg/dL, where the
    ratio is undefined, are left out; NaN if none is left)."""
    target, pred = np.asarray(target, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    ok = target > 0
    if not ok.any():
        return float("nan")
    return float(100.0 * np.mean(np.abs(pred[ok] - target[ok]) / target[ok]))


def persistence(history: np.ndarray, n_horizons: int) -> np.ndarray:
    """The last-value baseline: every horizon predicts the most recent reading."""
    last = np.asarray(history, dtype=np.float64)[:, -1:]
    return np.repeat(last, n_horizons, axis=1)


def time_lag_minutes(pred: np.ndarray, ref: np.ndarray, target_times: np.ndarray, patient: np.ndarray, *,
                     max_lag_steps: int = 12, grid_seconds: int = 300) -> float:
    """The delay of a forecast behind the reference, in minutes: the shift k x 5 min (0 .. max_lag_steps) at which
    the forecast for time tau best matches the reference at tau - k (highest Pearson correlation over all pairs
    present, pooled over patients). The temporal-gain analysis of Sparacino et al. 2007 ("Glucose concentration can
    be predicted ahead in time from continuous glucose monitoring sensor time-series", IEEE TBME 54(5)) measures
    this delay; a forecast at +30 min with lag 30 is no earlier than the last reading. NaN without pairs."""
    pred, ref = np.asarray(pred, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    times, patient = np.asarray(target_times, dtype=np.int64), np.asarray(patient)
    if not (pred.shape == ref.shape == times.shape == patient.shape):
        raise ValueError(f"pred, ref, target_times, patient differ in shape: {pred.shape}, {ref.shape}, "
                         f"{times.shape}, {patient.shape}")
    best, best_corr = float("nan"), -np.inf
    keys = np.unique(patient, return_inverse=True)[1].astype(np.int64) * (1 << 40) + times // grid_seconds
    order = np.argsort(keys)
    sorted_keys = keys[order]
    for k in range(max_lag_steps + 1):
        want = keys - k
        pos = np.clip(np.searchsorted(sorted_keys, want), 0, len(keys) - 1)
        hit = sorted_keys[pos] == want if len(keys) else np.zeros(0, dtype=bool)
        a, b = np.flatnonzero(hit), order[pos[hit]]
        if len(a) < 3 or pred[a].std() == 0 or ref[b].std() == 0:
            continue
        c = float(np.corrcoef(pred[a], ref[b])[0, 1])
        if c > best_corr:
            best, best_corr = k * grid_seconds / 60.0, c
    return best
