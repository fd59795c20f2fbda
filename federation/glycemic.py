"""Hypoglycaemia detection scores of a forecast against a reference (glucose in mg/dL).

Window level (`hypo_detection`): an event is a reference value below the threshold (70 mg/dL: level 1
hypoglycaemia in the International Consensus on Use of CGM, T. Danne et al., Diabetes Care 40(12):1631-1640,
2017); the forecast detects it when its value is below the same threshold. Event level (`hypo_alerts`): hypo
events of >= 15 min and alert episodes, with sensitivity, precision, false alerts per patient-day and time gained.
Sensitivity = TP / (TP + FN), specificity = TN / (TN + FP); either is None, not NaN, when its denominator is zero
(no events, or no non-events), so JSON stays valid.
RMSE, MAE and MARD live in `federation.metrics`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from federation.error_grids import HYPO_MGDL, paired_mgdl


@dataclass(frozen=True)
class HypoDetection:
    threshold: float
    true_positive: int
    false_negative: int
    true_negative: int
    false_positive: int

    @property
    def sensitivity(self) -> float | None:
        events = self.true_positive + self.false_negative
        return self.true_positive / events if events else None

    @property
    def specificity(self) -> float | None:
        normal = self.true_negative + self.false_positive
        return self.true_negative / normal if normal else None

    def as_dict(self) -> dict:
        return {**asdict(self), "sensitivity": self.sensitivity, "specificity": self.specificity}


def hypo_detection(reference: np.ndarray, prediction: np.ndarray, *, threshold: float = HYPO_MGDL) -> HypoDetection:
    """Confusion counts of `prediction < threshold` against `reference < threshold`."""
    if not (np.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a positive number of mg/dL, got {threshold}")
    ref, pred = paired_mgdl(reference, prediction)
    event, alarm = ref < threshold, pred < threshold
    return HypoDetection(
        threshold=float(threshold),
        true_positive=int(np.sum(event & alarm)),
        false_negative=int(np.sum(event & ~alarm)),
        true_negative=int(np.sum(~event & ~alarm)),
        false_positive=int(np.sum(~event & alarm)),
    )


# Hypoglycaemia events and forecast alerts (event level). An event starts at the first of at least 3 consecutive
# 5-min readings (15 min) below 70 mg/dL and ends after 3 consecutive readings at or above it: the event definition
# of the international consensus on CGM metrics (Battelino et al., Diabetes Care 46(8):1593-1603, 2023; Danne et
# al. 2017). An alert is an episode of consecutive forecasts below the alert level (rules in `hypo_alerts`); an
# alarm raised at the first low reading itself is not a forecast and predicts nothing.
EVENT_MIN_READINGS = 3
ALERT_LEAD_TOLERANCE_MIN = 15.0  # an alert up to horizon + 15 min before an onset still predicts it (ours)


@dataclass(frozen=True)
class HypoAlerts:
    """Event-level hypo alerts of a forecast: what a clinician asks of an alarm."""

    events: int  # hypo events in the reference
    detected: int  # events predicted by an alert episode (see `hypo_alerts`)
    alerts: int  # alert episodes that started outside an event
    true_alerts: int  # of those, followed by an event onset within horizon + tolerance
    patient_days: float
    time_gained_min: float | None  # median over detected events of onset - raise time (capped at horizon + 15)

    @property
    def sensitivity(self) -> float | None:
        return self.detected / self.events if self.events else None

    @property
    def precision(self) -> float | None:
        return self.true_alerts / self.alerts if self.alerts else None

    @property
    def false_alerts_per_day(self) -> float | None:
        return (self.alerts - self.true_alerts) / self.patient_days if self.patient_days > 0 else None

    def as_dict(self) -> dict:
        return {**asdict(self), "sensitivity": self.sensitivity, "precision": self.precision,
                "false_alerts_per_day": self.false_alerts_per_day}


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) index pairs of the runs of True in a boolean array (end exclusive)."""
    d = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1), strict=True))


def hypo_events(reference: np.ndarray, *, threshold: float = HYPO_MGDL,
                min_readings: int = EVENT_MIN_READINGS) -> np.ndarray:
    """Per reading of one contiguous 5-min series: True inside a hypo event. An event starts with `min_readings`
    consecutive readings below threshold (all of them inside) and lasts until `min_readings` consecutive readings at
    or above it (those are outside). A NaN reading changes no count."""
    ref = np.asarray(reference, dtype=np.float64)
    inside = np.zeros(len(ref), dtype=bool)
    in_event, run = False, 0
    for i, v in enumerate(ref):
        if np.isnan(v):
            inside[i] = in_event
            continue
        if not in_event:
            run = run + 1 if v < threshold else 0
            if run >= min_readings:
                in_event, run = True, 0
                inside[i - min_readings + 1:i + 1] = True
        else:
            inside[i] = True
            run = run + 1 if v >= threshold else 0
            if run >= min_readings:
                in_event, run = False, 0
                inside[i - min_readings + 1:i + 1] = False
    return inside


def hypo_alerts(reference: np.ndarray, forecast: np.ndarray, target_times: np.ndarray, patient: np.ndarray, *,
                horizon_min: float = 30.0, alert_below: float = HYPO_MGDL, threshold: float = HYPO_MGDL,
                patient_days: float, grid_seconds: int = 300) -> HypoAlerts:
    """Event-level hypo alerts: `forecast[i]` is made at target_times[i] - horizon for target time
    target_times[i], where the reference is `reference[i]`; each patient's windows are one 5-min series (gaps
    split it). An alert episode runs while consecutive forecasts are below `alert_below`. It predicts an event
    when the event's onset comes after the episode is raised and at most horizon + 15 min after its last low
    forecast (the alarm is sounding, or just was, as the low approaches); time gained is onset - raise time,
    at most horizon + 15 min. Episodes raised inside an event are neither true nor false alerts."""
    ref, fc = np.asarray(reference, dtype=np.float64), np.asarray(forecast, dtype=np.float64)
    times, patient = np.asarray(target_times, dtype=np.int64), np.asarray(patient)
    if not (ref.shape == fc.shape == times.shape == patient.shape):
        raise ValueError("reference, forecast, target_times and patient must have one shape")
    if not patient_days > 0:
        raise ValueError(f"patient_days must be > 0, got {patient_days}")
    lead_s = (horizon_min + ALERT_LEAD_TOLERANCE_MIN) * 60.0
    n_events = detected = alerts = true_alerts = 0
    gains: list[float] = []
    for p in np.unique(patient):
        idx = np.flatnonzero(patient == p)
        idx = idx[np.argsort(times[idx])]
        t, r, f = times[idx], ref[idx], fc[idx]
        splits = np.flatnonzero(np.diff(t) != grid_seconds) + 1
        onsets, episodes = [], []  # episodes: (raised, last low forecast made, raised inside an event)
        for seg in np.split(np.arange(len(t)), splits):
            ts, inside = t[seg], hypo_events(r[seg], threshold=threshold)
            onsets += [ts[s] for s, _e in _runs(inside)]
            for s, e in _runs(f[seg] < alert_below):
                raised = ts[s] - horizon_min * 60.0  # a forecast is made one horizon before its target
                episodes.append((raised, ts[e - 1] - horizon_min * 60.0, _in_event_at(ts, inside, raised)))
        on = np.array(onsets, dtype=np.float64)
        n_events += len(on)
        ep = np.array(episodes, dtype=np.float64).reshape(-1, 3)
        for onset in on:
            ok = (ep[:, 0] < onset) & (onset <= ep[:, 1] + lead_s)
            if ok.any():
                detected += 1
                gains.append(min(float(onset - ep[ok, 0].min()), lead_s) / 60.0)
        for raised, last, during in ep:
            if during:
                continue
            alerts += 1
            true_alerts += int(((on > raised) & (on <= last + lead_s)).any())
    return HypoAlerts(events=n_events, detected=detected, alerts=alerts, true_alerts=true_alerts,
                      patient_days=float(patient_days), time_gained_min=float(np.median(gains)) if gains else None)


def _in_event_at(t: np.ndarray, inside: np.ndarray, when: float) -> bool:
    """Whether the reference series (target times t) is inside an event at time `when` (False before it starts)."""
    k = int(np.searchsorted(t, when, side="right")) - 1
    return bool(k >= 0 and t[k] == when and inside[k])
