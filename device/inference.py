"""Local forecast alerts: the loaded LiteRT model on the device's raw readings, with a confidence per alert.

Raw readings (before local DP) feed a rolling window of the last 24 readings on the 5-min grid (a gap empties
it); the device's own raw insulin deliveries and announced carbs (`add_insulin`, `add_carbs`; kept for the last
`federation.features.HISTORY_BINS` x 5 min) give the same features the gateways train on (`features_at`: insulin
and carbs on board, their expected effect, time since meal and bolus, time of day, and the glucose context of its
readings of the last 24 h); each complete window is
forecast at +30 and +60 min. A device that knows no insulin or carbs forecasts with `events_known` = 0.

A horizon whose forecast crosses a threshold
(hypo < 70 mg/dL, hyper > 250 mg/dL: level 1 hypoglycaemia and level 2 hyperglycaemia of the International
Consensus on Time in Range, Battelino et al., Diabetes Care 42(8), 2019) gets a confidence from the release's
calibration, a Gaussian residual model (ours, not from a paper): truth = forecast + r, r ~ N(mean_h, sd_h^2)
measured on validation windows, so P(hypo) = Phi((70 - forecast - mean_h) / sd_h) and
P(hyper) = 1 - Phi((250 - forecast - mean_h) / sd_h). The confidence of a kind is its largest over the
crossing horizons. At or above the clinician-set threshold (`DEFAULT_ALERT_CONFIDENCE`, `--alert-confidence`)
it is an alert; below, it is flagged for human review instead.

Counting is edge-triggered per kind (none < review < alert): a new event when the level rises, so a low
forecast that persists over many windows is one event. Only counts leave the device (status topic), never a
reading or a forecast.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from federation.features import GLUCOSE_CONTEXT_BINS, HISTORY_BINS, EventHistory, features_at
from federation.model import GRID_SECONDS, HISTORY_STEPS, N_INPUTS
from federation.release import Calibration

HYPO_MGDL = 70.0  # Battelino et al. 2019, level 1 hypoglycaemia: < 70 mg/dL
HYPER_MGDL = 250.0  # Battelino et al. 2019, level 2 hyperglycaemia: > 250 mg/dL
HORIZONS_MIN = (30, 60)
DEFAULT_ALERT_CONFIDENCE = 0.8  # ours: a forecast exactly at the threshold has confidence ~0.5; 0.8 ~ 0.84 SD past it
LEVELS = {"none": 0, "review": 1, "alert": 2}


def _phi(z: float) -> float:
    """Standard normal CDF."""
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


@dataclass(frozen=True)
class Decision:
    kind: str  # "hypo" or "hyper"
    action: str  # "alert" or "review"
    confidence: float
    horizon_min: int


def assess(forecast: np.ndarray, calibration: Calibration, *, threshold: float) -> list[Decision]:
    """At most one decision per kind for one window's forecasts (mg/dL at +30, +60)."""
    out = []
    for kind in ("hypo", "hyper"):
        best: tuple[float, int] | None = None
        for j, horizon in enumerate(HORIZONS_MIN):
            f, mu, sd = float(forecast[j]), calibration.residual_mean_mgdl[j], calibration.residual_sd_mgdl[j]
            if kind == "hypo" and f < HYPO_MGDL:
                p = _phi((HYPO_MGDL - f - mu) / sd)
            elif kind == "hyper" and f > HYPER_MGDL:
                p = 1.0 - _phi((HYPER_MGDL - f - mu) / sd)
            else:
                continue
            if best is None or p > best[0]:
                best = (p, horizon)
        if best is not None:
            out.append(Decision(kind, "alert" if best[0] >= threshold else "review", best[0], best[1]))
    return out


def _push(series: tuple[deque[int], deque[float]], t: int, value: float, *, oldest_bin: int) -> None:
    """Append (t, value) and drop what lies before `oldest_bin` (5-min bins)."""
    times, values = series
    times.append(t)
    values.append(value)
    while times and times[0] // GRID_SECONDS < oldest_bin:
        times.popleft()
        values.popleft()


def _arrays(series: tuple[deque[int], deque[float]]) -> tuple[np.ndarray, np.ndarray]:
    times, values = series
    return (np.fromiter(times, dtype=np.int64, count=len(times)),
            np.fromiter(values, dtype=np.float64, count=len(values)))


class AlertMonitor:
    """Rolling raw window, forecasts and edge-triggered alert/review counts for one device."""

    def __init__(self, *, threshold: float = DEFAULT_ALERT_CONFIDENCE, grid_s: int = GRID_SECONDS,
                 tz_offset_s: int = 0) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"alert confidence threshold must be in (0, 1], got {threshold}")
        self.threshold, self.grid_s, self.tz_offset_s = threshold, grid_s, tz_offset_s
        self._times: deque[int] = deque(maxlen=HISTORY_STEPS)
        self._values: deque[float] = deque(maxlen=HISTORY_STEPS)
        self._insulin: tuple[deque[int], deque[float]] = (deque(), deque())  # (times, units)
        self._carbs: tuple[deque[int], deque[float]] = (deque(), deque())  # (times, grams)
        self._day: tuple[deque[int], deque[float]] = (deque(), deque())  # raw readings of the last 24 h (context)
        self._level = {"hypo": 0, "hyper": 0}
        self.counts: Counter[str] = Counter()

    def add_reading(self, t: int, mgdl: float) -> bool:
        """Append a raw reading on the 5-min grid; True when the window is complete. Off-grid readings are skipped."""
        tol = self.grid_s // 2
        if self._times:
            step = t - self._times[-1]
            if step < self.grid_s - tol:
                return False  # a faster sensor: keep one reading per grid step
            if step > self.grid_s + tol:
                self._times.clear()
                self._values.clear()
        self._times.append(int(t))
        self._values.append(float(mgdl))
        _push(self._day, int(t), float(mgdl), oldest_bin=int(t) // GRID_SECONDS - GLUCOSE_CONTEXT_BINS + 1)
        return len(self._values) == HISTORY_STEPS

    def add_insulin(self, t: int, units: float) -> None:
        """A raw insulin delivery (units, basal or bolus) at unix time t."""
        self._add_event(self._insulin, t, units, "insulin units")

    def add_carbs(self, t: int, grams: float) -> None:
        """Announced carbohydrates (grams) at unix time t."""
        self._add_event(self._carbs, t, grams, "carb grams")

    def _add_event(self, events: tuple[deque[int], deque[float]], t: int, amount: float, what: str) -> None:
        if not (np.isfinite(amount) and amount >= 0):
            raise ValueError(f"{what} must be finite and >= 0, got {amount}")
        if amount:
            _push(events, int(t), float(amount), oldest_bin=int(t) // GRID_SECONDS - HISTORY_BINS)

    def events(self) -> EventHistory:
        return EventHistory(*_arrays(self._insulin), *_arrays(self._carbs))

    def window(self) -> np.ndarray:
        """The model's input (N_INPUTS,): the last 24 raw readings, then the features at the last one."""
        out = np.empty(N_INPUTS, dtype=np.float32)
        out[:HISTORY_STEPS] = np.asarray(self._values, dtype=np.float32)
        day_t, day_v = _arrays(self._day)
        out[HISTORY_STEPS:] = features_at(self._times[-1], self.events(), tz_offset_s=self.tz_offset_s,
                                          glucose_times=day_t, glucose_values=day_v)
        return out

    def decide(self, forecast: np.ndarray, calibration: Calibration) -> list[Decision]:
        """Count this window's forecast; return the decisions that are new events (level rose)."""
        self.counts["forecasts"] += 1
        decisions = {d.kind: d for d in assess(forecast, calibration, threshold=self.threshold)}
        events = []
        for kind in ("hypo", "hyper"):
            d = decisions.get(kind)
            level = LEVELS[d.action] if d else 0
            if level > self._level[kind]:
                events.append(d)
                self.counts[f"{kind}_{d.action}s"] += 1
            self._level[kind] = level
        return events

    def status(self) -> dict:
        """Counts only: forecasts run, alerts and review flags per kind."""
        keys = ("forecasts", "hypo_alerts", "hyper_alerts", "hypo_reviews", "hyper_reviews")
        return {"alerts": {k: self.counts.get(k, 0) for k in keys}, "alert_confidence": self.threshold}
