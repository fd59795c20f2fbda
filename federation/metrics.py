"""Forecast metrics and baselines shared by every tier (glucose in mg/dL)."""

from __future__ import annotations

import numpy as np


def rmse(pred: np.ndarray, target: np.ndarray) -> float:
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    return float(np.sqrt(np.mean((pred - target) ** 2)))


def mae(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(pred, dtype=np.float64) - np.asarray(target, dtype=np.float64))))


def mard(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean absolute relative difference, in percent of the reference."""
    target = np.asarray(target, dtype=np.float64)
    return float(100.0 * np.mean(np.abs(np.asarray(pred, dtype=np.float64) - target) / target))


def persistence(history: np.ndarray, n_horizons: int) -> np.ndarray:
    """The last-value baseline: every horizon predicts the most recent reading."""
    last = np.asarray(history, dtype=np.float64)[:, -1:]
    return np.repeat(last, n_horizons, axis=1)
