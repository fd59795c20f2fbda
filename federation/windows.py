"""Resampling of irregular readings to the 5-min grid, optional denoising, and (2 h -> +30/+60 min) windows.

A window's inputs are the 2-h glucose history and the features of `federation.features` (insulin and carbs on
board, time since meal and bolus, time of day) at its last reading; each window keeps the patient it came from.

Clinical exports (`resample`) are not on the grid: a real sensor's 5-min readings drift a few seconds to minutes
off it, so binning by floor would put two readings in one bin and leave the next empty (a gap that kills every window
across it). `resample` fills each grid point with the linear interpolation of the readings either side of it when
they are at most `RESAMPLE_MAX_SPAN_S` (7.5 min: one 5-min step plus half a step of jitter) apart, so a missing
reading (a 10-min span) stays a gap; readings denser than the grid (1-min sensors) are bin-averaged as `to_grid` does.

Readings from devices are locally privatised (unbiased but very noisy). Smoothing the stored grid is
post-processing of already-private data, so it costs no privacy (Dwork and Roth 2014, Prop. 2.1). Two
smoothers are offered: a centred moving mean (training data is historical, so it may look both ways) and a
causal one (only the past, as a device would see it); either applies to the training inputs, the targets, or
both. Whether it helps is measured by `python -m bench.denoise` (table in docs/gateway.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from federation.features import EventHistory, grid_features
from federation.model import GRID_SECONDS, HISTORY_STEPS, HORIZON_STEPS, N_INPUTS
from federation.series import PatientSeries

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
RESAMPLE_MAX_SPAN_S = 450  # ours: a 5-min step plus half a step of clock jitter; 10 min (a lost reading): a gap
DENSE_SPACING_S = 240  # median spacing below this: a sensor sampling faster than the grid (bin-averaged)


@dataclass(frozen=True)
class Resampled:
    """One series on the 5-min grid, with what resampling did (`wearfed hospital check` prints it)."""

    origin: int  # unix seconds of grid point 0 (a multiple of 300)
    grid: np.ndarray  # mg/dL, NaN where no reading supports the grid point
    readings: int  # readings in (after merging identical timestamps)
    off_grid: int  # readings not exactly on a grid point (moved by interpolation)
    duplicates: int  # readings sharing a timestamp with another (averaged)
    gaps: int  # runs of empty grid points between the first and the last filled one
    method: str  # "exact", "interpolated" or "bin-averaged"


def resample(times: np.ndarray, values: np.ndarray, *, max_span_s: float = RESAMPLE_MAX_SPAN_S) -> Resampled:
    """Put readings at any times on the 5-min grid (module docstring): interpolation for ~5-min sensors, bin means for
    denser ones; grid points with no readings within `max_span_s` around them stay NaN."""
    t = np.asarray(times, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if t.size == 0:
        return Resampled(0, np.empty(0), 0, 0, 0, 0, "exact")
    uniq, inv, counts = np.unique(t, return_inverse=True, return_counts=True)
    vals = np.bincount(inv, weights=v) / counts
    off = int(np.count_nonzero(uniq % GRID_SECONDS))
    dups = int(t.size - uniq.size)
    if uniq.size > 1 and np.median(np.diff(uniq)) < DENSE_SPACING_S:
        origin, grid = to_grid(uniq.astype(np.int64), vals)
        method = "bin-averaged"
    else:
        first = int(np.ceil(uniq[0] / GRID_SECONDS)) * GRID_SECONDS
        last = int(uniq[-1] // GRID_SECONDS) * GRID_SECONDS
        g = np.arange(first, last + 1, GRID_SECONDS, dtype=np.float64)
        j = np.searchsorted(uniq, g, side="left")  # uniq[j] >= g
        hi, lo = np.clip(j, 0, uniq.size - 1), np.clip(j - 1, 0, uniq.size - 1)
        exact = uniq[hi] == g
        span = uniq[hi] - uniq[lo]
        inside = (j > 0) & (j < uniq.size) & (span <= max_span_s)
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.where(span > 0, (g - uniq[lo]) / np.where(span > 0, span, 1.0), 0.0)
        interp = vals[lo] + w * (vals[hi] - vals[lo])
        grid = np.where(exact, vals[hi], np.where(inside, interp, np.nan))
        origin, method = first, "exact" if off == 0 else "interpolated"
    filled = np.flatnonzero(~np.isnan(grid))
    gaps = int(np.count_nonzero(np.diff(filled) > 1)) if filled.size else 0
    return Resampled(int(origin), grid, int(uniq.size), off, dups, gaps, method)


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


def _window_view(grid: np.ndarray, tgrid: np.ndarray, *, origin: int, cutoff: float | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(glucose histories (n, 24), targets (n, 2), grid index of each window's last reading (n,))."""
    span = HISTORY_STEPS + max(HORIZON_STEPS)
    if grid.size < span:
        return np.empty((0, HISTORY_STEPS)), np.empty((0, len(HORIZON_STEPS))), np.empty(0, dtype=np.int64)
    view = np.lib.stride_tricks.sliding_window_view(grid, span)
    tview = np.lib.stride_tricks.sliding_window_view(tgrid, span)
    keep = ~(np.isnan(view).any(axis=1) | np.isnan(tview).any(axis=1))
    if cutoff is not None:
        last_target_time = origin + (np.arange(view.shape[0]) + span - 1) * GRID_SECONDS
        keep &= last_target_time <= cutoff
    rows = np.flatnonzero(keep)
    x = view[rows, :HISTORY_STEPS]
    y = tview[rows][:, [HISTORY_STEPS - 1 + h for h in HORIZON_STEPS]]
    return x, y, rows + HISTORY_STEPS - 1


def make_windows(grid: np.ndarray, *, origin: int = 0, cutoff: float | None = None,
                 targets: np.ndarray | None = None, events: EventHistory | None = None,
                 tz_offset_s: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """All complete windows of one series: X (n, N_INPUTS) model inputs, y (n, 2) targets in mg/dL.

    X is the 2-h glucose history (24 values, mg/dL) followed by the `federation.features` at the last reading,
    computed from `events` (None: no insulin or carbs known). Windows with a gap are skipped. `origin` is the
    unix time of grid bin 0 (a multiple of 300 s, as `to_grid` returns). With `cutoff` (unix seconds), only
    windows whose last target time is <= cutoff are returned. `targets`, a grid of the same length (e.g. a
    smoothed copy), supplies y instead of `grid`.
    """
    x, y, _t = windows_with_times(grid, origin=origin, cutoff=cutoff, targets=targets, events=events,
                                  tz_offset_s=tz_offset_s)
    return x, y


def windows_with_times(grid: np.ndarray, *, origin: int = 0, cutoff: float | None = None,
                       targets: np.ndarray | None = None, events: EventHistory | None = None,
                       tz_offset_s: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`make_windows` plus each window's last-reading time (n,) in unix seconds (bin start)."""
    grid = np.asarray(grid, dtype=np.float64)
    tgrid = grid if targets is None else np.asarray(targets, dtype=np.float64)
    if tgrid.shape != grid.shape:
        raise ValueError(f"targets grid has shape {tgrid.shape}, inputs {grid.shape}")
    if origin % GRID_SECONDS:
        raise ValueError(f"grid origin {origin} is not on the 5-min grid (a multiple of {GRID_SECONDS} s)")
    hist, y, last = _window_view(grid, tgrid, origin=origin, cutoff=cutoff)
    x = np.empty((len(hist), N_INPUTS))
    x[:, :HISTORY_STEPS] = hist
    if len(hist):
        feats = grid_features(events or NO_EVENTS, first_bin=origin // GRID_SECONDS, n_bins=grid.size,
                              tz_offset_s=tz_offset_s, glucose=grid)
        x[:, HISTORY_STEPS:] = feats[last]
    return x, y, origin + last.astype(np.int64) * GRID_SECONDS


NO_EVENTS = EventHistory(np.empty(0, dtype=np.int64), np.empty(0), np.empty(0, dtype=np.int64), np.empty(0))
SeriesLike = PatientSeries | tuple[np.ndarray, np.ndarray]


def as_series(item: SeriesLike) -> PatientSeries:
    """A `PatientSeries`, or (times, values) of glucose only (no insulin or carbs known)."""
    if isinstance(item, PatientSeries):
        return item
    times, values = item
    return PatientSeries(times=np.asarray(times), glucose=np.asarray(values))


def series_events(s: PatientSeries) -> EventHistory:
    return EventHistory(np.asarray(s.insulin_times, dtype=np.int64), np.asarray(s.insulin_units, dtype=np.float64),
                        np.asarray(s.carb_times, dtype=np.int64), np.asarray(s.carb_grams, dtype=np.float64))


@dataclass(frozen=True)
class Windows:
    """Training or evaluation windows with the patient each came from (user-level DP groups by `patient`).

    Unpacks as `x, y = windows` for code that needs only the arrays."""

    x: np.ndarray  # (n, N_INPUTS): 24 glucose values (mg/dL), then the features
    y: np.ndarray  # (n, 2) mg/dL at +30 and +60 min
    patient: np.ndarray  # (n,) int64 index into `patients`
    patients: tuple[str, ...]
    t: np.ndarray  # (n,) unix seconds of each window's last reading

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.x, self.y))

    def __len__(self) -> int:
        return len(self.x)

    @property
    def n_patients(self) -> int:
        """Patients with at least one window."""
        return int(np.unique(self.patient).size)

    def take(self, rows: np.ndarray) -> Windows:
        return Windows(self.x[rows], self.y[rows], self.patient[rows], self.patients, self.t[rows])


def empty_windows() -> Windows:
    return Windows(np.empty((0, N_INPUTS)), np.empty((0, len(HORIZON_STEPS))), np.empty(0, dtype=np.int64), (),
                   np.empty(0, dtype=np.int64))


def series_windows(s: SeriesLike, *, cutoff: float | None = None, denoise: Denoise = NO_DENOISE,
                   tz_offset_s: int = 0, resampled: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, t) of one patient's series: glucose on its own 5-min grid (smoothed), features from its events.

    `resampled`: put off-grid readings on the grid with `resample` (clinical exports) instead of `to_grid`'s bins."""
    s = as_series(s)
    if resampled:
        r = resample(s.times, s.glucose)
        origin, grid = r.origin, r.grid
    else:
        origin, grid = to_grid(s.times, s.glucose)
    inputs, targets = denoise.grids(grid)
    return windows_with_times(inputs, origin=origin, cutoff=cutoff, targets=targets, events=series_events(s),
                              tz_offset_s=tz_offset_s)


def windows_from_series(series: Mapping[str, SeriesLike] | Iterable[SeriesLike], *, cutoff: float | None = None,
                        denoise: Denoise = NO_DENOISE, tz_offset_s: int = 0, resampled: bool = False) -> Windows:
    """Windows of many patients, each put on its own 5-min grid (and smoothed) first, concatenated.

    A mapping's keys are the patient (device) ids; an iterable's items are numbered patient-0000, ...
    `resampled`: clinical exports, put on the grid by `resample`.
    """
    items = list(series.items()) if isinstance(series, Mapping) else \
        [(f"patient-{k:04d}", s) for k, s in enumerate(series)]
    xs, ys, ps, ts = [empty_windows().x], [empty_windows().y], [np.empty(0, dtype=np.int64)], \
        [np.empty(0, dtype=np.int64)]
    for k, (_name, s) in enumerate(items):
        x, y, t = series_windows(s, cutoff=cutoff, denoise=denoise, tz_offset_s=tz_offset_s, resampled=resampled)
        xs.append(x)
        ys.append(y)
        ps.append(np.full(len(x), k, dtype=np.int64))
        ts.append(t)
    return Windows(np.concatenate(xs), np.concatenate(ys), np.concatenate(ps), tuple(n for n, _ in items),
                   np.concatenate(ts))
