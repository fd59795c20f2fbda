"""The day-release feature map: 5-min windows of glucose, insulin and carbs -> one standardised vector per window.

Devices compute it on their own raw day (``device.day_release``) and release a privatised sum of outer products
of these vectors; gateways and the cloud turn the sums into a linear forecaster (``gateway.day_stats``) that runs
the same map at inference. Both sides must agree on every constant here, so the map is versioned by
``FEATURE_SPEC``; change anything and bump it.

Per window, anchored at grid step k (the last reading of 2 h of history; targets at k+6 and k+12):

* ``bias`` 1; ``level`` (g_k - 140)/50; ``d5 .. d115`` g_k - g_(k-l) for l = 1, 3, 6, 12, 23 steps.
* ``iob``, ``ins30``, ``ins60``: insulin above basal (delivery minus the smallest 5-min delivery so far) still
  on board at k, and the part of it that acts over the next 30/60 min, with the exponential insulin action curve
  of OpenAPS oref0 and Loop (D. Maksimovic's model, LoopKit/Loop issue 388; oref0 ``lib/iob/calculate.js``),
  "rapid-acting" preset: peak 75 min, duration 300 min (OpenAPS/Trio documentation). With
  ``tau = tp (1 - tp/td) / (1 - 2 tp/td)``, ``a = 2 tau/td``, ``S = 1/(1 - a + (1 + a) e^(-td/tau))`` the
  fraction still on board after t minutes is ``1 - S (1 - a) ((t^2/(tau td (1 - a)) - t/tau - 1) e^(-t/tau) + 1)``.
* ``cob``, ``carb30``, ``carb60``: announced carbs, same curve shape with peak 45 min and duration 180 min (our
  choice: 3 h is Loop's "medium" absorption time; measured within 0.2 mg/dL of 2 h and 4 h, see docs/ldp-release.md).
* targets ``dy30``, ``dy60``: g_(k+6) - g_k and g_(k+12) - g_k (the forecaster predicts the change, a residual
  over persistence, as ``federation.model`` does).

Events count at anchor k only if they fall in a 5-min bin before k's (strictly before the reading), so a forecast
never looks ahead. A window exists where all 36 readings k-23 .. k+12 exist (as ``federation.windows``); with
``day_only`` also only inside one grid day (steps 23 .. 275 of 288), so a day's windows use that day's data alone.

Every feature and target is divided by a fixed scale (``SCALES``, the RMS of each over the 30 published
UVA/Padova subjects simulated with a public seed, rounded; ``sim.ldp_release.public_constants`` recomputes them),
so vectors are about unit size per coordinate whatever the patient. Numpy only (a Pi Zero runs this).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from federation.errors import SchemaError
from federation.series import PatientSeries

FEATURE_SPEC = "wearfed.day-features/1"
GRID_SECONDS = 300
STEPS_PER_DAY = 288
HISTORY_STEPS = 24
HORIZON_STEPS = (6, 12)
SPAN = HISTORY_STEPS + max(HORIZON_STEPS)  # 36 readings per window
LAGS = (1, 3, 6, 12, 23)
FEATURES = ("bias", "level", "d5", "d15", "d30", "d60", "d115", "iob", "ins30", "ins60", "cob", "carb30",
            "carb60")
TARGETS = ("dy30", "dy60")
NAMES = FEATURES + TARGETS
N_FEATURES = len(FEATURES)
DIM = len(NAMES)

LEVEL_CENTER, LEVEL_SCALE = 140.0, 50.0
INSULIN_PEAK_MIN, INSULIN_DURATION_MIN = 75.0, 300.0  # oref0 "rapid-acting" exponential curve
CARB_PEAK_MIN, CARB_DURATION_MIN = 45.0, 180.0

# Input ranges: readings outside the sensor's range are clipped to it (device.sensor.SENSOR_RANGE); insulin and
# carbs per 5-min bin are clipped to amounts no pump delivers or meal announces in 5 minutes.
GLUCOSE_RANGE = (40.0, 400.0)
INSULIN_MAX_PER_STEP = 25.0  # units
CARBS_MAX_PER_STEP = 200.0  # grams

# RMS of each coordinate over the public derivation (bias: not scaled). See the module docstring.
SCALES = np.array([1.0, 1.0, 5.2, 14.0, 25.0, 39.0, 52.0, 3.4, 0.8, 1.5, 21.0, 8.1, 15.0, 25.0, 39.0])


def action_on_board(minutes: np.ndarray, *, peak: float, duration: float) -> np.ndarray:
    """Fraction of a dose still on board ``minutes`` after it (1 at 0, 0 from ``duration`` on); see the docstring."""
    if not 0 < 2 * peak < duration:
        raise ValueError(f"need 0 < 2 * peak < duration, got peak={peak}, duration={duration}")
    tau = peak * (1 - peak / duration) / (1 - 2 * peak / duration)
    a = 2 * tau / duration
    s = 1 / (1 - a + (1 + a) * math.exp(-duration / tau))
    t = np.clip(np.asarray(minutes, dtype=np.float64), 0.0, duration)
    left = 1 - s * (1 - a) * ((t * t / (tau * duration * (1 - a)) - t / tau - 1) * np.exp(-t / tau) + 1)
    return np.where(t >= duration, 0.0, np.clip(left, 0.0, 1.0))


def _kernels(peak: float, duration: float) -> tuple[np.ndarray, ...]:
    """Per lag l = 1 .. ceil(duration/5) steps: (on board, acting in the next 30 min, in the next 60 min)."""
    lags = np.arange(1, int(math.ceil(duration / 5)) + 1) * 5.0
    board = action_on_board(lags, peak=peak, duration=duration)
    return (board,) + tuple(board - action_on_board(lags + 5.0 * h, peak=peak, duration=duration)
                            for h in HORIZON_STEPS)


_INSULIN_KERNELS = _kernels(INSULIN_PEAK_MIN, INSULIN_DURATION_MIN)
_CARB_KERNELS = _kernels(CARB_PEAK_MIN, CARB_DURATION_MIN)


def _past_convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """out[..., k] = sum over l >= 1 of x[..., k - l] * kernel[l - 1] (events strictly before step k)."""
    out = np.zeros(x.shape, dtype=np.float64)
    n = x.shape[-1]
    for lag in range(1, min(len(kernel), n - 1) + 1):
        out[..., lag:] += x[..., : n - lag] * kernel[lag - 1]
    return out


def _check_grid(name: str, a: np.ndarray, shape: tuple[int, ...] | None) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim not in (1, 2):
        raise SchemaError(f"{name}: expected a (steps,) or (patients, steps) array, got shape {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise SchemaError(f"{name}: shape {arr.shape} differs from glucose's {shape}")
    return arr


def clean_inputs(glucose: np.ndarray, insulin: np.ndarray, carbs: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and clip grid inputs: glucose NaN = no reading, else clipped to GLUCOSE_RANGE; insulin and carbs
    must be finite and are clipped to [0, max per step]. Raises SchemaError naming the field."""
    g = _check_grid("glucose", glucose, None)
    u = _check_grid("insulin", insulin, g.shape)
    c = _check_grid("carbs", carbs, g.shape)
    if np.isinf(g).any():
        raise SchemaError("glucose: infinite value (use NaN for a missing reading)")
    for name, arr in (("insulin", u), ("carbs", c)):
        if not np.isfinite(arr).all():
            raise SchemaError(f"{name}: non-finite value at step {int(np.flatnonzero(~np.isfinite(arr))[0])}")
    g = np.where(np.isnan(g), np.nan, np.clip(g, *GLUCOSE_RANGE))
    return g, np.clip(u, 0.0, INSULIN_MAX_PER_STEP), np.clip(c, 0.0, CARBS_MAX_PER_STEP)


def window_vectors(glucose: np.ndarray, insulin: np.ndarray, carbs: np.ndarray, *, day_only: bool
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Standardised vectors (..., steps, DIM) for every anchor step and a mask (..., steps) of complete windows.

    Inputs are 5-min grids of one or many patients (same shape): glucose mg/dL (NaN: no reading), insulin units
    delivered in each bin, carbs grams announced in each bin. With ``day_only`` the grid must hold whole days
    (a multiple of 288 steps, the first starting at midnight) and every window, basal estimate and insulin or carb
    effect uses that day's bins only. Vectors where the mask is False are zero.
    """
    g, u, c = clean_inputs(glucose, insulin, carbs)
    one = g.ndim == 1
    if one:
        g, u, c = g[None], u[None], c[None]
    n_pat, steps = g.shape
    if day_only:
        if steps % STEPS_PER_DAY:
            raise SchemaError(f"glucose: day_only needs whole days of {STEPS_PER_DAY} steps, got {steps}")
        days = steps // STEPS_PER_DAY
        shape3 = (n_pat * days, STEPS_PER_DAY)
        g3, u3, c3 = g.reshape(shape3), u.reshape(shape3), c.reshape(shape3)
    else:
        g3, u3, c3 = g, u, c
    bolus = u3 - np.minimum.accumulate(u3, axis=1)  # basal: the smallest delivery so far (causal)
    effects = [_past_convolve(bolus, k) for k in _INSULIN_KERNELS] + [_past_convolve(c3, k) for k in _CARB_KERNELS]
    rows, width = g3.shape
    present = ~np.isnan(g3)
    if width >= SPAN:
        complete = np.lib.stride_tricks.sliding_window_view(present, SPAN, axis=1).all(axis=2)
    else:
        complete = np.zeros((rows, 0), dtype=bool)
    valid = np.zeros((rows, width), dtype=bool)
    valid[:, HISTORY_STEPS - 1: HISTORY_STEPS - 1 + complete.shape[1]] = complete
    g0 = np.where(present, g3, 0.0)

    def shifted(a: np.ndarray, by: int) -> np.ndarray:  # out[:, k] = a[:, k + by], zero outside
        out = np.zeros_like(a)
        if by >= 0:
            out[:, : width - by] = a[:, by:]
        else:
            out[:, -by:] = a[:, : width + by]
        return out

    cols = [np.ones_like(g0), (g0 - LEVEL_CENTER) / LEVEL_SCALE]
    cols += [g0 - shifted(g0, -lag) for lag in LAGS]
    cols += effects
    cols += [shifted(g0, h) - g0 for h in HORIZON_STEPS]
    z = np.stack(cols, axis=-1) / SCALES
    z = np.where(valid[..., None], z, 0.0)
    z = z.reshape(n_pat, steps, DIM)
    valid = valid.reshape(n_pat, steps)
    return (z[0], valid[0]) if one else (z, valid)


def to_mgdl(targets: np.ndarray) -> np.ndarray:
    """Standardised (dy30, dy60) -> mg/dL changes."""
    return np.asarray(targets, dtype=np.float64) * SCALES[N_FEATURES:]


@dataclass(frozen=True)
class DayGrid:
    """One patient-day on the 5-min grid: bin i covers [day_start + 300 i, day_start + 300 (i + 1))."""

    day_start: int
    glucose: np.ndarray  # (288,) mg/dL, NaN where no reading
    insulin: np.ndarray  # (288,) units delivered
    carbs: np.ndarray  # (288,) grams announced

    @property
    def day(self) -> str:
        import datetime as dt

        return dt.datetime.fromtimestamp(self.day_start, dt.UTC).strftime("%Y-%m-%d")


def day_grid(series: PatientSeries, *, day_start: int) -> DayGrid:
    """The UTC day starting at ``day_start`` (a multiple of 86400) of one patient's series, on the 5-min grid.

    Readings in a bin are averaged, insulin and carbs in a bin summed; anything outside the day is ignored.
    Non-finite times or amounts raise SchemaError naming the field.
    """
    if isinstance(day_start, bool) or not isinstance(day_start, (int, np.integer)) or day_start % 86400:
        raise SchemaError(f"day_start: must be an integer multiple of 86400 (UTC midnight), got {day_start!r}")
    out = []
    for tname, vname, mean in (("times", "glucose", True), ("insulin_times", "insulin_units", False),
                               ("carb_times", "carb_grams", False)):
        t = np.asarray(getattr(series, tname), dtype=np.float64).ravel()
        v = np.asarray(getattr(series, vname), dtype=np.float64).ravel()
        if not np.isfinite(t).all():
            raise SchemaError(f"{tname}: non-finite time")
        if not mean and not np.isfinite(v).all():
            raise SchemaError(f"{vname}: non-finite amount")
        keep = (t >= day_start) & (t < day_start + 86400)
        if mean:
            keep &= ~np.isnan(v)
        idx = ((t[keep] - day_start) // GRID_SECONDS).astype(np.int64)
        sums = np.bincount(idx, weights=v[keep], minlength=STEPS_PER_DAY)
        if mean:
            counts = np.bincount(idx, minlength=STEPS_PER_DAY)
            with np.errstate(invalid="ignore", divide="ignore"):
                sums = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        out.append(sums)
    return DayGrid(int(day_start), *out)
