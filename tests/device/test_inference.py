"""Forecast alerts: Gaussian-residual confidence, alert vs. human review, edge-triggered counting, the raw window."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from device.inference import HYPER_MGDL, HYPO_MGDL, AlertMonitor, assess
from federation.features import FEATURE_NAMES
from federation.litert import TFLiteForecaster
from federation.model import HISTORY_STEPS, N_INPUTS
from federation.release import Calibration
from federation.series import PatientSeries
from tests.device.releases import CALIBRATION, TFLITE

CAL = Calibration((0.0, 0.0), (10.0, 20.0), 500)


def phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_hypo_confidence_is_the_gaussian_probability_of_truth_below_70() -> None:
    [d] = assess(np.array([60.0, 75.0]), CAL, threshold=0.8)  # only +30 crosses: P = Phi((70 - 60) / 10)
    assert (d.kind, d.horizon_min, d.action) == ("hypo", 30, "alert")
    assert d.confidence == pytest.approx(phi(1.0))
    [d] = assess(np.array([60.0, 30.0]), CAL, threshold=0.8)  # both cross: the more certain horizon wins
    assert d.horizon_min == 60 and d.confidence == pytest.approx(phi(2.0))


def test_below_the_threshold_a_crossing_is_flagged_for_review_not_alerted() -> None:
    [d] = assess(np.array([65.0, 80.0]), CAL, threshold=0.8)  # P = Phi(0.5) = 0.69
    assert d.action == "review" and d.confidence == pytest.approx(phi(0.5))
    [d] = assess(np.array([65.0, 80.0]), CAL, threshold=0.6)  # a clinician lowers the threshold
    assert d.action == "alert"


def test_hyper_and_the_residual_bias() -> None:
    [d] = assess(np.array([200.0, 280.0]), CAL, threshold=0.8)  # P = 1 - Phi((250 - 280) / 20)
    assert (d.kind, d.horizon_min) == ("hyper", 60) and d.confidence == pytest.approx(phi(1.5))
    biased = Calibration((-15.0, 0.0), (10.0, 20.0), 500)  # the model over-forecasts by 15 mg/dL at +30
    [d] = assess(np.array([260.0, 240.0]), biased, threshold=0.8)
    assert d.confidence == pytest.approx(1 - phi((HYPER_MGDL - 260 + 15) / 10)) and d.action == "review"
    assert assess(np.array([HYPO_MGDL, HYPER_MGDL]), CAL, threshold=0.8) == []  # on the lines: no crossing


def test_counts_are_edge_triggered_per_kind() -> None:
    mon = AlertMonitor(threshold=0.8)
    seq = [[120, 120], [65, 90], [55, 90], [50, 90], [120, 120], [40, 300], [120, 120]]
    events = [[(e.kind, e.action) for e in mon.decide(np.array(f, float), CAL)] for f in seq]
    assert events == [[], [("hypo", "review")], [("hypo", "alert")], [], [], [("hypo", "alert"), ("hyper", "alert")],
                      []]
    assert mon.status()["alerts"] == {"forecasts": 7, "hypo_alerts": 2, "hyper_alerts": 1, "hypo_reviews": 1,
                                      "hyper_reviews": 0}
    assert set(mon.status()) == {"alerts", "alert_confidence"}  # counts and the threshold: no reading, no forecast


def test_the_window_needs_24_contiguous_grid_readings() -> None:
    mon = AlertMonitor()
    t0 = 1_700_000_000
    assert not any(mon.add_reading(t0 + 300 * k, 100.0) for k in range(23))
    assert mon.add_reading(t0 + 300 * 23, 100.0)
    assert not mon.add_reading(t0 + 300 * 23 + 60, 101.0)  # off-grid (a 1-min sensor): skipped
    assert mon.add_reading(t0 + 300 * 24, 99.0) and mon.window()[HISTORY_STEPS - 1] == 99.0
    assert not mon.add_reading(t0 + 300 * 30, 98.0)  # a gap (warm-up, lost readings): the window starts over
    with pytest.raises(ValueError):
        AlertMonitor(threshold=0.0)


def test_the_window_carries_the_devices_own_insulin_and_carbs_as_the_gateway_computes_them() -> None:
    mon = AlertMonitor()
    t0 = 1_767_225_600
    mon.add_carbs(t0 - 1800, 60.0)
    mon.add_insulin(t0 - 1800, 5.0)
    mon.add_insulin(t0 - 40 * 86400, 9.0)  # far outside the history a device keeps: dropped
    values = 120.0 + 50 * np.sin(np.arange(24) / 3.0)
    for k in range(24):
        mon.add_reading(t0 + 300 * k, float(values[k]))
    x = mon.window()
    assert x.shape == (N_INPUTS,) and x.dtype == np.float32
    series = PatientSeries(times=t0 + 300 * np.arange(24), glucose=values,
                           insulin_times=np.array([t0 - 1800]), insulin_units=np.array([5.0]),
                           carb_times=np.array([t0 - 1800]), carb_grams=np.array([60.0]))
    gateway_x, _ = make_windows_from(series)
    np.testing.assert_allclose(x, gateway_x, rtol=1e-6)
    cob = HISTORY_STEPS + FEATURE_NAMES.index("cob_g")
    assert 0 < x[cob] < 60.0 and x[HISTORY_STEPS + FEATURE_NAMES.index("events_known")] == 1.0
    assert x[HISTORY_STEPS + FEATURE_NAMES.index("glucose_mean24h_mgdl")] == pytest.approx(values.mean(), rel=1e-5)
    with pytest.raises(ValueError):
        mon.add_insulin(t0, -1.0)


def make_windows_from(series: PatientSeries) -> tuple[np.ndarray, np.ndarray]:
    """The gateway's input for the window ending at the series' last reading (its targets are not needed)."""
    from federation.features import grid_features
    from federation.windows import series_events

    first = int(series.times[0]) // 300
    n = int(series.times[-1]) // 300 - first + 1
    grid = np.full(n, np.nan)
    grid[np.asarray(series.times) // 300 - first] = series.glucose
    feats = grid_features(series_events(series), first_bin=first, n_bins=n, glucose=grid)[-1]
    return np.concatenate([series.glucose[-HISTORY_STEPS:], feats]).astype(np.float32), feats


def test_litert_forecasts_of_a_fast_fall_raise_a_hypo_alert() -> None:
    lite, cal = TFLiteForecaster(TFLITE), Calibration.from_doc(CALIBRATION)
    mon = AlertMonitor(threshold=0.8)
    # a pump's basal, a 3 U bolus and a small snack, then -6 mg/dL per 5 min from 180 down to the sensor floor:
    # review flags first, then alerts (one event each)
    t0, values = 1_700_000_000, [max(40.0, 180.0 - 6 * max(0, k - 10)) for k in range(36)]
    for k in range(-30, 36):
        mon.add_insulin(t0 + 300 * k, 0.1)
    mon.add_insulin(t0 + 300 * 5, 3.0)
    mon.add_carbs(t0 + 300 * 5, 10.0)
    kinds = []
    for k, v in enumerate(values):
        if mon.add_reading(t0 + 300 * k, v):
            kinds += [(e.kind, e.action) for e in mon.decide(lite.predict_one(mon.window()), cal)]
    assert kinds == [("hypo", "review"), ("hypo", "alert")] and mon.counts["forecasts"] == len(values) - 23


@given(f30=st.floats(20, 400), f60=st.floats(20, 400), sd=st.floats(1, 60), mean=st.floats(-20, 20),
       threshold=st.floats(0.01, 1.0))
def test_alert_exactly_when_confident_and_only_on_a_crossing(f30: float, f60: float, sd: float, mean: float,
                                                            threshold: float) -> None:
    cal = Calibration((mean, mean), (sd, sd), 100)
    decisions = {d.kind: d for d in assess(np.array([f30, f60]), cal, threshold=threshold)}
    assert ("hypo" in decisions) == (min(f30, f60) < HYPO_MGDL)
    assert ("hyper" in decisions) == (max(f30, f60) > HYPER_MGDL)
    for d in decisions.values():
        assert 0.0 <= d.confidence <= 1.0
        assert (d.action == "alert") == (d.confidence >= threshold)
    if "hypo" in decisions:  # the most certain crossing horizon
        want = max(phi((HYPO_MGDL - f - mean) / sd) for f in (f30, f60) if f < HYPO_MGDL)
        assert decisions["hypo"].confidence == pytest.approx(want)
