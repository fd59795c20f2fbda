"""Forecaster inputs besides glucose: insulin on board, carbs on board, what each will do in the next 30/60 min,
time since the last meal and bolus, time of day. Pure numpy (devices compute the same as gateways).

Insulin: the exponential insulin-action curve of OpenAPS oref0 (`lib/iob/calculate.js`, "exponential" curves) and
LoopKit (`ExponentialInsulinModel`), derived by D. Maksimovic (LoopKit/Loop issue #388, 2017). With peak time tp and
duration td (rapid-acting analogue presets: tp = 75 min, td = 360 min):

    tau = tp (1 - tp/td) / (1 - 2 tp/td),   a = 2 tau / td,   S = 1 / (1 - a + (1 + a) exp(-td/tau))
    activity(t)  = (S / tau^2) t (1 - t/td) exp(-t/tau)                                   (fraction per minute)
    remaining(t) = 1 - S (1 - a) ((t^2 / (tau td (1 - a)) - t/tau - 1) exp(-t/tau) + 1)   (insulin on board)

remaining(0) = 1, remaining(td) = 0, activity peaks at tp and integrates to 1 over [0, td].

Carbohydrate: the gut absorption of Hovorka et al. 2004 ("Nonlinear model predictive control of glucose
concentration in subjects with type 1 diabetes", Physiol. Meas. 25:905-920, eq. for U_G): two equal compartments
with time-to-maximum t_max,G = 40 min, so a meal of D grams appears at the rate D t exp(-t/tm) / tm^2 and the part
not yet absorbed (carbs on board) is D (1 + t/tm) exp(-t/tm). Bioavailability (0.8 there) is a constant factor the
model absorbs; we count announced grams. Absorption is cut at 6 h (2.4e-3 of the meal left).

Discretisation: events and readings sit on absolute 5-min bins (bin = unix seconds // 300, as `federation.windows`
grids); at the bin of a window's last reading, an event of bin j counts with lag (i - j) x 5 min if 0 <= lag < 6 h.
Insulin is net of basal as in oref0's net IOB: each bin's delivery minus the basal rate, estimated as the lowest
delivery per bin over the previous 2 h (ours: for a pump on a basal profile, its rate; 0 for injection therapy,
where most bins carry none, and in the first 2 h after the first delivery). A bolus is a bin delivering more than
twice that basal plus 0.05 U (ours). The total daily dose (insulin over the previous 24 h, scaled up when less
history is known) stands for the patient's insulin sensitivity (the "1800 rule" ISF = 1800 / TDD of insulin-pump
practice, J. Walsh and R. Roberts, "Pumping Insulin"); the carb ratio CR is estimated as carbs / bolus insulin over
the same 24 h. The expected effects in mg/dL (insulin x ISF, carbs x ISF / CR) over the next 30/60 min and the last
30 min scale the events by them.
Series with no events at all (glucose-only devices, old files) get zero insulin and carbs and `events_known` = 0,
so the model can tell "none known" from "none taken".

The patient's own glucose over the previous 24 h (mean, SD, time below 70 and above 180 mg/dL: the core CGM metrics
of the international consensus, Battelino et al., Diabetes Care 42(8):1593-1603, 2019) tells the shared model what
kind of patient it forecasts for (a child with large swings, an adult near target). In an exploratory run while
building this (a pooled model, Adam, 300 training patients, 60 held-out ones; the sweep's figures are in
docs/results.md) it lowered RMSE@30 from 15.3 to 13.9 mg/dL (children 17.6 to 15.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

GRID_SECONDS = 300
INSULIN_PEAK_MIN = 75.0  # oref0 "rapid-acting" and Loop "rapid-acting adult" presets
INSULIN_DURATION_MIN = 360.0  # Loop's exponential presets: 6 h
CARB_TMAX_MIN = 40.0  # Hovorka et al. 2004, t_max,G
CARB_DURATION_MIN = 360.0  # ours: the tail after 6 h (0.24% of a meal) is dropped
BASAL_WINDOW_BINS = 24  # 2 h of 5-min bins for the basal estimate (ours)
TDD_WINDOW_BINS = 288  # 24 h for the total daily dose
TDD_MIN_BINS = 36  # below 3 h of insulin history the TDD is not extrapolated (ours)
ISF_RULE = 1800.0  # mg/dL per unit x TDD: the "1800 rule" (Walsh and Roberts, "Pumping Insulin")
CR_DEFAULT_G_PER_U = 15.0  # grams per unit before any meal bolus is seen (a common starting ratio)
CR_RANGE = (3.0, 50.0)  # clip of the carb ratio estimate (ours)
TDD_FLOOR_U = 5.0  # the ISF rule is applied with at least this TDD (ours: no division by ~0 without insulin)
CR_MIN_BOLUS_U = 0.5  # below this much bolus insulin in 24 h the ratio is not estimated (ours)
BOLUS_FACTOR, BOLUS_MARGIN_U = 2.0, 0.05  # a bolus bin delivers > 2 x basal + 0.05 U (ours)
SINCE_CAP_MIN = 360.0  # "time since" saturates at 6 h (and is 6 h when there was none)
HORIZONS_MIN = (30, 60)

FEATURE_NAMES = (
    "iob_u",  # net insulin on board at the last reading, units
    "cob_g",  # carbs on board, grams
    "insulin_next30_u",  # net insulin the doses so far will absorb in the next 30 min, units
    "carbs_next30_g",  # carbs the meals so far will absorb in the next 30 min, grams
    "tdd_u",  # total daily dose: insulin over the previous 24 h, units
    "carb_ratio",  # grams per bolus unit over the previous 24 h (carbs / bolus insulin): the patient's CR
    "insulin_effect30_mgdl",  # -insulin_next30_u x ISF, ISF = 1800 / TDD: the expected fall it causes
    "insulin_effect60_mgdl",
    "carb_effect30_mgdl",  # carbs_next30_g x ISF / CR: the expected rise
    "carb_effect60_mgdl",
    "insulin_effect_past30_mgdl",  # the same for what was absorbed in the last 30 min (what the trend shows)
    "carb_effect_past30_mgdl",
    "since_meal",  # minutes since the last carb event / 360, capped at 1
    "since_bolus",  # minutes since the last bolus / 360, capped at 1
    "tod_sin",  # time of day (UTC + tz offset) on the unit circle
    "tod_cos",
    "events_known",  # 1 when the series carries insulin or carb events, else 0
    "glucose_mean24h_mgdl",  # the patient's own glucose over the previous 24 h: mean,
    "glucose_sd24h_mgdl",  # standard deviation,
    "below70_24h",  # fraction of readings below 70 mg/dL (time below range),
    "above180_24h",  # and above 180 mg/dL (time above range)
)
GLUCOSE_CONTEXT_BINS = 288  # 24 h
CONTEXT_FEATURES = ("glucose_mean24h_mgdl", "glucose_sd24h_mgdl", "below70_24h", "above180_24h")
N_FEATURES = len(FEATURE_NAMES)
# Scale of each feature for the network (raw units / scale ~ O(1)); chosen from the cohort's typical ranges.
FEATURE_SCALE = np.array([5.0, 50.0, 1.0, 20.0, 40.0, 15.0, 30.0, 50.0, 30.0, 50.0, 30.0, 30.0,
                          1.0, 1.0, 1.0, 1.0, 1.0, 50.0, 30.0, 0.2, 0.3], dtype=np.float32)
FEATURE_CENTER = np.zeros(len(FEATURE_NAMES), dtype=np.float32)
FEATURE_CENTER[FEATURE_NAMES.index("glucose_mean24h_mgdl")] = 150.0


def _insulin_constants(peak: float = INSULIN_PEAK_MIN, duration: float = INSULIN_DURATION_MIN
                       ) -> tuple[float, float, float]:
    tau = peak * (1 - peak / duration) / (1 - 2 * peak / duration)
    a = 2 * tau / duration
    s = 1 / (1 - a + (1 + a) * math.exp(-duration / tau))
    return tau, a, s


def insulin_remaining(minutes: np.ndarray | float, *, peak: float = INSULIN_PEAK_MIN,
                      duration: float = INSULIN_DURATION_MIN) -> np.ndarray:
    """Fraction of a dose still on board `minutes` after it (1 before, 0 from `duration` on)."""
    t = np.asarray(minutes, dtype=np.float64)
    tau, a, s = _insulin_constants(peak, duration)
    tc = np.clip(t, 0.0, duration)
    rem = 1 - s * (1 - a) * ((tc ** 2 / (tau * duration * (1 - a)) - tc / tau - 1) * np.exp(-tc / tau) + 1)
    return np.where(t <= 0, 1.0, np.where(t >= duration, 0.0, rem))


def insulin_activity(minutes: np.ndarray | float, *, peak: float = INSULIN_PEAK_MIN,
                     duration: float = INSULIN_DURATION_MIN) -> np.ndarray:
    """Fraction of a dose acting per minute, `minutes` after it (0 outside (0, duration))."""
    t = np.asarray(minutes, dtype=np.float64)
    tau, _a, s = _insulin_constants(peak, duration)
    act = (s / tau ** 2) * t * (1 - t / duration) * np.exp(-t / tau)
    return np.where((t <= 0) | (t >= duration), 0.0, act)


def carbs_remaining(minutes: np.ndarray | float, *, tmax: float = CARB_TMAX_MIN,
                    duration: float = CARB_DURATION_MIN) -> np.ndarray:
    """Fraction of a meal not yet absorbed `minutes` after it: (1 + t/tm) exp(-t/tm) (Hovorka et al. 2004)."""
    t = np.asarray(minutes, dtype=np.float64)
    rem = (1 + np.clip(t, 0, None) / tmax) * np.exp(-np.clip(t, 0, None) / tmax)
    return np.where(t <= 0, 1.0, np.where(t >= duration, 0.0, rem))


def carbs_rate(minutes: np.ndarray | float, *, tmax: float = CARB_TMAX_MIN) -> np.ndarray:
    """Fraction of a meal appearing per minute: t exp(-t/tm) / tm^2 (Hovorka et al. 2004, U_G / D_G)."""
    t = np.asarray(minutes, dtype=np.float64)
    return np.where(t <= 0, 0.0, t * np.exp(-t / tmax) / tmax ** 2)


def _kernels() -> dict[str, np.ndarray]:
    """Per-bin weights of an event `lag` bins ago (lag 0 .. 71) for each additive feature."""
    lag = np.arange(int(INSULIN_DURATION_MIN // 5)) * GRID_SECONDS / 60.0
    ins, carb = insulin_remaining, carbs_remaining
    return {
        "iob_u": ins(lag),
        "insulin_next30_u": ins(lag) - ins(lag + 30),
        "insulin_next60_u": ins(lag) - ins(lag + 60),
        "insulin_past30_u": ins(lag - 30) - ins(lag),
        "cob_g": carb(lag),
        "carbs_next30_g": carb(lag) - carb(lag + 30),
        "carbs_next60_g": carb(lag) - carb(lag + 60),
        "carbs_past30_g": carb(lag - 30) - carb(lag),
    }


KERNELS = _kernels()
KERNEL_BINS = len(KERNELS["iob_u"])  # 72: events older than 6 h no longer count
HISTORY_BINS = KERNEL_BINS + max(BASAL_WINDOW_BINS, TDD_WINDOW_BINS)  # event history a device keeps


def _causal(ev: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return np.convolve(ev, kernel)[: len(ev)]


def rolling_basal(insulin_bins: np.ndarray) -> np.ndarray:
    """Lowest delivery per bin over the previous 2 h (bins i-23 .. i); 0 until 2 h of deliveries are known (a first
    bolus is not a basal rate)."""
    ins = np.asarray(insulin_bins, dtype=np.float64)
    w = BASAL_WINDOW_BINS
    out = np.zeros_like(ins)
    if len(ins) >= w:
        out[w - 1:] = np.lib.stride_tricks.sliding_window_view(ins, w).min(axis=1)
    return out


def _window_sum(bins: np.ndarray) -> np.ndarray:
    """Sum over the previous 24 h (bins i-287 .. i)."""
    c = np.concatenate([[0.0], np.cumsum(bins)])
    idx = np.arange(1, len(bins) + 1)
    return c[idx] - c[np.maximum(idx - TDD_WINDOW_BINS, 0)]


def rolling_tdd(insulin_bins: np.ndarray) -> np.ndarray:
    """Insulin over the previous 24 h (bins i-287 .. i), scaled to 24 h when fewer bins are known (at least 3 h)."""
    ins = np.asarray(insulin_bins, dtype=np.float64)
    c = np.concatenate([[0.0], np.cumsum(ins)])
    idx = np.arange(1, len(ins) + 1)
    lo = np.maximum(idx - TDD_WINDOW_BINS, 0)
    known = idx - lo
    return (c[idx] - c[lo]) * TDD_WINDOW_BINS / np.maximum(known, TDD_MIN_BINS)


def _since(mask: np.ndarray) -> np.ndarray:
    """Minutes since the last bin where mask is true (inclusive: 0 at that bin), capped, / cap."""
    idx = np.arange(len(mask))
    last = np.maximum.accumulate(np.where(mask, idx, -10 ** 9))
    minutes = (idx - last) * GRID_SECONDS / 60.0
    return np.minimum(minutes, SINCE_CAP_MIN) / SINCE_CAP_MIN


def bin_events(times: np.ndarray, amounts: np.ndarray, *, first_bin: int, n_bins: int) -> np.ndarray:
    """Sum of event amounts per absolute 5-min bin first_bin .. first_bin + n_bins - 1 (others dropped)."""
    b = np.asarray(times, dtype=np.int64) // GRID_SECONDS - first_bin
    keep = (b >= 0) & (b < n_bins)
    return np.bincount(b[keep], weights=np.asarray(amounts, dtype=np.float64)[keep], minlength=n_bins)[:n_bins]


@dataclass(frozen=True)
class EventHistory:
    """A patient's insulin (units) and carb (grams) events: what features are computed from."""

    insulin_times: np.ndarray
    insulin_units: np.ndarray
    carb_times: np.ndarray
    carb_grams: np.ndarray

    @property
    def known(self) -> bool:
        return bool(np.size(self.insulin_times) or np.size(self.carb_times))


def glucose_context(grid: np.ndarray) -> np.ndarray:
    """(n, 4): mean, SD, fraction < 70 and > 180 mg/dL of the non-NaN bins i-287 .. i of a 5-min glucose grid
    (mean 150 and the rest 0 where no bin is known yet)."""
    g = np.asarray(grid, dtype=np.float64)
    known = ~np.isnan(g)
    z = np.where(known, g, 0.0)

    def window_sum(v: np.ndarray) -> np.ndarray:
        c = np.concatenate([[0.0], np.cumsum(v)])
        idx = np.arange(1, len(v) + 1)
        return c[idx] - c[np.maximum(idx - GLUCOSE_CONTEXT_BINS, 0)]

    n = window_sum(known.astype(np.float64))
    safe = np.maximum(n, 1.0)
    mean = window_sum(z) / safe
    sd = np.sqrt(np.maximum(window_sum(z * z) / safe - mean ** 2, 0.0))
    low = window_sum((known & (g < 70.0)).astype(np.float64)) / safe
    high = window_sum((known & (g > 180.0)).astype(np.float64)) / safe
    out = np.stack([np.where(n > 0, mean, 150.0), sd, low, high], axis=1)
    return out


def grid_features(events: EventHistory, *, first_bin: int, n_bins: int, tz_offset_s: int = 0,
                  glucose: np.ndarray | None = None) -> np.ndarray:
    """Features (n_bins, N_FEATURES) at absolute bins first_bin .. first_bin + n_bins - 1 (see module doc);
    `glucose`, the 5-min grid of the same bins (NaN where no reading), gives the 24-h glucose context."""
    out = np.zeros((n_bins, N_FEATURES), dtype=np.float64)
    if n_bins == 0:
        return out
    ctx = [FEATURE_NAMES.index(n) for n in CONTEXT_FEATURES]
    out[:, ctx] = glucose_context(np.full(n_bins, np.nan) if glucose is None else glucose)
    col = {name: k for k, name in enumerate(FEATURE_NAMES)}
    back = HISTORY_BINS  # history before the first bin that still matters
    ins = bin_events(events.insulin_times, events.insulin_units, first_bin=first_bin - back, n_bins=n_bins + back)
    carbs = bin_events(events.carb_times, events.carb_grams, first_bin=first_bin - back, n_bins=n_bins + back)
    has_insulin = np.size(events.insulin_times) > 0
    basal = _from_first(ins, rolling_basal) if has_insulin else np.zeros_like(ins)
    net = ins - basal
    conv = {name: _causal(net if name.startswith(("iob", "insulin")) else carbs, k)[back:]
            for name, k in KERNELS.items()}
    tdd = _from_first(ins, rolling_tdd) if has_insulin else np.zeros_like(ins)
    bolus = ins > BOLUS_FACTOR * basal + BOLUS_MARGIN_U
    carbs24, bolus24 = _window_sum(carbs), _window_sum(np.where(bolus, net, 0.0))
    cr = np.where(bolus24 > CR_MIN_BOLUS_U, carbs24 / np.maximum(bolus24, CR_MIN_BOLUS_U), CR_DEFAULT_G_PER_U)
    cr = np.clip(cr, *CR_RANGE)[back:]
    isf = ISF_RULE / np.maximum(tdd[back:], TDD_FLOOR_U)
    for name in ("iob_u", "cob_g", "insulin_next30_u", "carbs_next30_g"):
        out[:, col[name]] = conv[name]
    out[:, col["tdd_u"]] = tdd[back:]
    out[:, col["carb_ratio"]] = cr
    for h in (*HORIZONS_MIN, "_past30"):
        src = f"next{h}" if isinstance(h, int) else h[1:]
        suffix = str(h) if isinstance(h, int) else h
        out[:, col[f"insulin_effect{suffix}_mgdl"]] = -conv[f"insulin_{src}_u"] * isf
        out[:, col[f"carb_effect{suffix}_mgdl"]] = conv[f"carbs_{src}_g"] * isf / cr
    out[:, col["since_meal"]] = _since(carbs > 0)[back:]
    out[:, col["since_bolus"]] = _since(bolus)[back:]
    seconds = (np.arange(first_bin, first_bin + n_bins, dtype=np.int64) * GRID_SECONDS + tz_offset_s) % 86400
    angle = 2 * np.pi * seconds / 86400.0
    out[:, col["tod_sin"]], out[:, col["tod_cos"]] = np.sin(angle), np.cos(angle)
    out[:, col["events_known"]] = 1.0 if events.known else 0.0
    return out


def _from_first(ins: np.ndarray, fn) -> np.ndarray:  # noqa: ANN001
    """`fn` over the bins from the first insulin delivery on, zero before (no data is not zero delivery)."""
    out = np.zeros_like(ins)
    nz = np.flatnonzero(ins)
    if nz.size:
        out[nz[0]:] = fn(ins[nz[0]:])
    return out


KERNEL_MATRIX = np.stack([KERNELS[n][::-1] for n in KERNELS])  # rows: kernels, reversed to dot with bins
KERNEL_NAMES = tuple(KERNELS)


def features_at(t_last: int, events: EventHistory, *, tz_offset_s: int = 0, glucose_times: np.ndarray | None = None,
                glucose_values: np.ndarray | None = None) -> np.ndarray:
    """Features (N_FEATURES,) at the bin of one reading time: what a device computes for its newest window, from
    its events (the last HISTORY_BINS bins matter) and its readings of the last 24 h (averaged per 5-min bin, as
    `federation.windows.to_grid`).

    The same arithmetic as `grid_features` at that bin, evaluated for that bin only (one dot product per kernel
    instead of whole-series convolutions): equal to it (tested), and fast enough for a hub (bench.device_inference).
    """
    b = int(t_last) // GRID_SECONDS
    n = HISTORY_BINS + 1
    out = np.zeros(N_FEATURES)
    col = _COLUMNS
    ins = bin_events(events.insulin_times, events.insulin_units, first_bin=b - HISTORY_BINS, n_bins=n)
    carbs = bin_events(events.carb_times, events.carb_grams, first_bin=b - HISTORY_BINS, n_bins=n)
    basal = np.zeros(n)
    tdd = 0.0
    nz = np.flatnonzero(ins) if np.size(events.insulin_times) else np.empty(0, dtype=np.int64)
    if nz.size:  # as _from_first(ins, rolling_basal / rolling_tdd) at the last bin
        start = int(nz[0])
        if n - start >= BASAL_WINDOW_BINS:
            basal[start + BASAL_WINDOW_BINS - 1:] = np.lib.stride_tricks.sliding_window_view(
                ins[start:], BASAL_WINDOW_BINS).min(axis=1)
        known = min(n - start, TDD_WINDOW_BINS)
        tdd = float(ins[n - known:].sum()) * TDD_WINDOW_BINS / max(known, TDD_MIN_BINS)
    net = ins - basal
    k = KERNEL_BINS
    conv = dict(zip(KERNEL_NAMES, _kernel_dots(net[-k:], carbs[-k:]), strict=True))
    bolus = ins > BOLUS_FACTOR * basal + BOLUS_MARGIN_U
    carbs24 = float(carbs[-TDD_WINDOW_BINS:].sum())
    bolus24 = float(np.where(bolus, net, 0.0)[-TDD_WINDOW_BINS:].sum())
    cr = carbs24 / max(bolus24, CR_MIN_BOLUS_U) if bolus24 > CR_MIN_BOLUS_U else CR_DEFAULT_G_PER_U
    cr = min(max(cr, CR_RANGE[0]), CR_RANGE[1])
    isf = ISF_RULE / max(tdd, TDD_FLOOR_U)
    for name in ("iob_u", "cob_g", "insulin_next30_u", "carbs_next30_g"):
        out[col[name]] = conv[name]
    out[col["tdd_u"]], out[col["carb_ratio"]] = tdd, cr
    for suffix, src in (("30", "next30"), ("60", "next60"), ("_past30", "past30")):
        out[col[f"insulin_effect{suffix}_mgdl"]] = -conv[f"insulin_{src}_u"] * isf
        out[col[f"carb_effect{suffix}_mgdl"]] = conv[f"carbs_{src}_g"] * isf / cr
    out[col["since_meal"]] = _since_last(carbs > 0)
    out[col["since_bolus"]] = _since_last(bolus)
    angle = 2 * np.pi * ((b * GRID_SECONDS + tz_offset_s) % 86400) / 86400.0
    out[col["tod_sin"]], out[col["tod_cos"]] = np.sin(angle), np.cos(angle)
    out[col["events_known"]] = 1.0 if events.known else 0.0
    out[[col[c] for c in CONTEXT_FEATURES]] = _context_at(b, glucose_times, glucose_values)
    return out


_COLUMNS = {name: k for k, name in enumerate(FEATURE_NAMES)}


_INSULIN_ROWS = np.array([name.startswith(("iob", "insulin")) for name in KERNEL_NAMES])


def _kernel_dots(net: np.ndarray, carbs: np.ndarray) -> np.ndarray:
    """Each kernel's value at the last bin: the dot of its (reversed) weights with the last KERNEL_BINS bins."""
    return np.where(_INSULIN_ROWS, KERNEL_MATRIX @ net, KERNEL_MATRIX @ carbs)


def _since_last(mask: np.ndarray) -> float:
    """`_since` at the last bin."""
    hits = np.flatnonzero(mask)
    if not hits.size:
        return 1.0
    return min((len(mask) - 1 - int(hits[-1])) * GRID_SECONDS / 60.0, SINCE_CAP_MIN) / SINCE_CAP_MIN


def _context_at(b: int, times: np.ndarray | None, values: np.ndarray | None) -> np.ndarray:
    """`glucose_context` at bin b from raw readings: binned per 5 min over bins b-287 .. b, then the same stats."""
    if times is None or not np.size(times):
        return np.array([150.0, 0.0, 0.0, 0.0])
    first = b - GLUCOSE_CONTEXT_BINS + 1
    idx = np.asarray(times, dtype=np.int64) // GRID_SECONDS - first
    keep = (idx >= 0) & (idx < GLUCOSE_CONTEXT_BINS)
    if not keep.any():
        return np.array([150.0, 0.0, 0.0, 0.0])
    sums = np.bincount(idx[keep], weights=np.asarray(values, dtype=np.float64)[keep], minlength=GLUCOSE_CONTEXT_BINS)
    counts = np.bincount(idx[keep], minlength=GLUCOSE_CONTEXT_BINS)
    g = sums[counts > 0] / counts[counts > 0]
    mean = g.mean()
    return np.array([mean, np.sqrt(max((g * g).mean() - mean * mean, 0.0)), (g < 70.0).mean(), (g > 180.0).mean()])
