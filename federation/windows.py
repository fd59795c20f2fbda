"""Resampling of irregular readings to the 5-min grid and (2 h history -> +30/+60 min) training windows."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from federation.model import GRID_SECONDS, HISTORY_STEPS, HORIZON_STEPS


def to_grid(times: np.ndarray, values: np.ndarray, *, start: int | None = None) -> tuple[int, np.ndarray]:
    """Average readings into 5-min bins; returns (grid start time, values with NaN where a bin is empty)."""
    times = np.asarray(times, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    if times.size == 0:
        return (start or 0), np.empty(0)
    origin = int(times.min() // GRID_SECONDS * GRID_SECONDS) if start is None else start
    idx = (times - origin) // GRID_SECONDS
    keep = idx >= 0
    idx, values = idx[keep], values[keep]
    n = int(idx.max()) + 1 if idx.size else 0
    sums = np.bincount(idx, weights=values, minlength=n)
    counts = np.bincount(idx, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        grid = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return origin, grid


def make_windows(grid: np.ndarray, *, origin: int = 0, cutoff: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All complete windows of one series: X (n, 24) history, y (n, 2) targets; windows with a gap are skipped.

    With `cutoff` (unix seconds), only windows whose last target time is <= cutoff are returned.
    """
    grid = np.asarray(grid, dtype=np.float64)
    span = HISTORY_STEPS + max(HORIZON_STEPS)
    if grid.size < span:
        return np.empty((0, HISTORY_STEPS)), np.empty((0, len(HORIZON_STEPS)))
    view = np.lib.stride_tricks.sliding_window_view(grid, span)
    if cutoff is not None:
        last_target_time = origin + (np.arange(view.shape[0]) + span - 1) * GRID_SECONDS
        view = view[last_target_time <= cutoff]
    view = view[~np.isnan(view).any(axis=1)]
    x = view[:, :HISTORY_STEPS]
    y = view[:, [HISTORY_STEPS - 1 + h for h in HORIZON_STEPS]]
    return x, y


def windows_from_series(series: Iterable[tuple[np.ndarray, np.ndarray]], *, cutoff: float | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Windows of many (times, values) series, each put on its own 5-min grid first, concatenated."""
    xs, ys = [np.empty((0, HISTORY_STEPS))], [np.empty((0, len(HORIZON_STEPS)))]
    for times, values in series:
        origin, grid = to_grid(times, values)
        x, y = make_windows(grid, origin=origin, cutoff=cutoff)
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)
