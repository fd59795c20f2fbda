"""Resampling of irregular readings to the 5-min grid, optional denoising, and (2 h -> +30/+60 min) windows.

Readings from devices are locally privatised (unbiased but very noisy). Smoothing the stored grid is
post-processing of already-private data, so it costs no privacy (Dwork and Roth 2014, Prop. 2.1). Two
smoothers are offered: a centred moving mean (training data is historical, so it may look both ways) and a
causal one (only the past, as a device would see it); either applies to the training inputs, the targets, or
both. Whether it helps is measured by `python -m bench.denoise` (table in docs/gateway.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from federation.model import GRID_SECONDS, HISTORY_STEPS, HORIZON_STEPS

SMOOTHERS = ("none", "centred", "causal")
APPLY_TO = ("inputs", "targets", "both")


def smooth(grid: np.ndarray, *, method: str, width: int) -> np.ndarray:
    """Moving mean over the valid (non-NaN) bins of a `width`-bin window; gaps stay gaps.

    "centred" averages bins i - width//2 .. i + width//2; "causal" averages bins i - width + 1 .. i.
    """
    if method not in SMOOTHERS:
        raise ValueError(f"smoother must be one of {SMOOTHERS}, got {method!r}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    grid = np.asarray(grid, dtype=np.float64)
    if method == "none" or width == 1 or grid.size == 0:
        return grid.copy()
    valid = ~np.isnan(grid)
    csum = np.concatenate([[0.0], np.cumsum(np.where(valid, grid, 0.0))])
    ccnt = np.concatenate([[0], np.cumsum(valid)])
    idx = np.arange(grid.size)
    if method == "centred":
        lo, hi = idx - width // 2, idx + width // 2 + 1
    else:
        lo, hi = idx - width + 1, idx + 1
    lo, hi = np.clip(lo, 0, grid.size), np.clip(hi, 0, grid.size)
    counts = ccnt[hi] - ccnt[lo]
    out = (csum[hi] - csum[lo]) / np.maximum(counts, 1)
    return np.where(valid, out, np.nan)


@dataclass(frozen=True)
class Denoise:
    """How a node smooths its privatised grid before windowing (post-processing: no privacy cost)."""

    method: str = "none"
    width: int = 1
    apply_to: str = "both"

    def __post_init__(self) -> None:
        if self.method not in SMOOTHERS:
            raise ValueError(f"smoother must be one of {SMOOTHERS}, got {self.method!r}")
        if self.apply_to not in APPLY_TO:
            raise ValueError(f"apply_to must be one of {APPLY_TO}, got {self.apply_to!r}")
        if self.width < 1:
            raise ValueError(f"width must be >= 1, got {self.width}")

    def grids(self, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(input grid, target grid) after smoothing."""
        smoothed = smooth(grid, method=self.method, width=self.width)
        inputs = smoothed if self.apply_to in ("inputs", "both") else grid
        targets = smoothed if self.apply_to in ("targets", "both") else grid
        return inputs, targets


NO_DENOISE = Denoise()


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


def make_windows(grid: np.ndarray, *, origin: int = 0, cutoff: float | None = None,
                 targets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All complete windows of one series: X (n, 24) history, y (n, 2) targets; windows with a gap are skipped.

    With `cutoff` (unix seconds), only windows whose last target time is <= cutoff are returned. `targets`,
    a grid of the same length (e.g. a smoothed copy), supplies y instead of `grid`.
    """
    grid = np.asarray(grid, dtype=np.float64)
    tgrid = grid if targets is None else np.asarray(targets, dtype=np.float64)
    if tgrid.shape != grid.shape:
        raise ValueError(f"targets grid has shape {tgrid.shape}, inputs {grid.shape}")
    span = HISTORY_STEPS + max(HORIZON_STEPS)
    if grid.size < span:
        return np.empty((0, HISTORY_STEPS)), np.empty((0, len(HORIZON_STEPS)))
    view = np.lib.stride_tricks.sliding_window_view(grid, span)
    tview = np.lib.stride_tricks.sliding_window_view(tgrid, span)
    keep = ~(np.isnan(view).any(axis=1) | np.isnan(tview).any(axis=1))
    if cutoff is not None:
        last_target_time = origin + (np.arange(view.shape[0]) + span - 1) * GRID_SECONDS
        keep &= last_target_time <= cutoff
    x = view[keep, :HISTORY_STEPS]
    y = tview[keep][:, [HISTORY_STEPS - 1 + h for h in HORIZON_STEPS]]
    return x, y


def windows_from_series(series: Iterable[tuple[np.ndarray, np.ndarray]], *, cutoff: float | None = None,
                        denoise: Denoise = NO_DENOISE) -> tuple[np.ndarray, np.ndarray]:
    """Windows of many (times, values) series, each put on its own 5-min grid (and smoothed) first, concatenated."""
    xs, ys = [np.empty((0, HISTORY_STEPS))], [np.empty((0, len(HORIZON_STEPS)))]
    for times, values in series:
        origin, grid = to_grid(times, values)
        inputs, targets = denoise.grids(grid)
        x, y = make_windows(inputs, origin=origin, cutoff=cutoff, targets=targets)
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)
