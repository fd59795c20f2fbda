"""Event-level hypo alerts and forecast time lag on hand-built series whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from federation.glycemic import hypo_alerts, hypo_events
from federation.metrics import time_lag_minutes

STEP = 300


def test_an_event_needs_15_minutes_below_70_and_ends_after_15_minutes_above() -> None:
    ref = np.array([80, 65, 66, 90, 60, 61, 62, 75, 64, 63, 80, 81, 82, 60], dtype=float)
    inside = hypo_events(ref)
    # 65, 66: only 10 min (no event); 60-62: event; 75 for 5 min does not end it; 64-63 continue; 80-82 end it;
    # the last 60 is alone (no event)
    assert inside.tolist() == [False, False, False, False, True, True, True, True, True, True, False, False, False,
                               False]


def series(ref: list[float], fc: list[float], *, patient: int = 0, t0: int = 0) -> tuple[np.ndarray, ...]:
    n = len(ref)
    return (np.array(ref, float), np.array(fc, float), t0 + np.arange(n) * STEP, np.full(n, patient))


def test_an_alert_ahead_of_the_onset_detects_the_event_and_gains_time() -> None:
    # reference: normal for 10 readings, then an event from index 10; the forecast for target index k is made at
    # index k - 6 (30 min earlier). Forecasts go low from target index 8: raised at index 2, 40 min before onset.
    ref = [100.0] * 10 + [60.0] * 5 + [100.0] * 10
    fc = [100.0] * 8 + [65.0] * 7 + [100.0] * 10
    a = hypo_alerts(*series(ref, fc), patient_days=1.0)
    assert (a.events, a.detected, a.alerts, a.true_alerts) == (1, 1, 1, 1)
    assert a.sensitivity == 1.0 and a.precision == 1.0 and a.false_alerts_per_day == 0.0
    assert a.time_gained_min == pytest.approx(40.0)


def test_an_alarm_at_the_first_low_reading_is_not_a_forecast() -> None:
    ref = [100.0] * 10 + [60.0] * 5 + [100.0] * 10
    fc = [100.0] * 16 + [60.0] * 2 + [100.0] * 7  # low forecasts raised at indices 10-11: inside the event
    a = hypo_alerts(*series(ref, fc), patient_days=2.0)
    assert (a.events, a.detected, a.alerts) == (1, 0, 0)  # neither a detection nor a false alert
    assert a.sensitivity == 0.0 and a.precision is None and a.time_gained_min is None


def test_alerts_far_from_any_event_are_false_and_counted_per_patient_day() -> None:
    ref = [100.0] * 60
    fc = [100.0] * 10 + [60.0] * 3 + [100.0] * 20 + [50.0] + [100.0] * 26  # two episodes, no event
    a = hypo_alerts(*series(ref, fc), patient_days=0.5)
    assert (a.events, a.alerts, a.true_alerts) == (0, 2, 0) and a.false_alerts_per_day == pytest.approx(4.0)
    assert a.sensitivity is None and a.precision == 0.0


def test_patients_and_gaps_split_series() -> None:
    r1, f1, t1, p1 = series([100.0] * 10 + [60.0] * 5, [100.0] * 8 + [60.0] * 7, patient=1)
    r2, f2, t2, p2 = series([60.0] * 5 + [100.0] * 5, [100.0] * 10, patient=2)  # starts inside an event
    a = hypo_alerts(np.r_[r1, r2], np.r_[f1, f2], np.r_[t1, t2], np.r_[p1, p2], patient_days=1.0)
    assert (a.events, a.detected) == (2, 1)


def test_bad_inputs_are_refused() -> None:
    r, f, t, p = series([100.0] * 3, [100.0] * 3)
    with pytest.raises(ValueError, match="shape"):
        hypo_alerts(r, f[:2], t, p, patient_days=1.0)
    with pytest.raises(ValueError, match="patient_days"):
        hypo_alerts(r, f, t, p, patient_days=0.0)


def test_time_lag_of_a_delayed_copy_is_its_delay() -> None:
    t = np.arange(400) * STEP
    ref = 120 + 50 * np.sin(2 * np.pi * np.arange(400) / 97) + 10 * np.sin(np.arange(400) / 7.0)
    delayed = np.r_[np.full(4, ref[0]), ref[:-4]]  # the forecast for tau is the reference at tau - 20 min
    patient = np.zeros(400, dtype=int)
    assert time_lag_minutes(delayed, ref, t, patient) == 20.0
    assert time_lag_minutes(ref, ref, t, patient) == 0.0
    two = time_lag_minutes(np.r_[delayed, delayed], np.r_[ref, ref], np.r_[t, t], np.r_[patient, patient + 1])
    assert two == 20.0  # pooled over patients, each matched only with itself
