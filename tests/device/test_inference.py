"""Forecast alerts: Gaussian-residual confidence, alert vs. human review, edge-triggered counting, the raw window."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from device.inference import HYPER_MGDL, HYPO_MGDL, AlertMonitor, assess
from federation.litert import TFLiteForecaster
from federation.release import Calibration
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
    assert mon.add_reading(t0 + 300 * 24, 99.0) and mon.window()[-1] == 99.0
    assert not mon.add_reading(t0 + 300 * 30, 98.0)  # a gap (warm-up, lost readings): the window starts over
    with pytest.raises(ValueError):
        AlertMonitor(threshold=0.0)


def test_litert_forecasts_of_a_fast_fall_raise_a_hypo_alert() -> None:
    lite, cal = TFLiteForecaster(TFLITE), Calibration.from_doc(CALIBRATION)
    mon = AlertMonitor(threshold=0.8)
    # flat, then -6 mg/dL per 5 min down to the sensor floor: review flags first, then alerts (one event each)
    t0, values = 1_700_000_000, [max(40.0, 180.0 - 6 * max(0, k - 10)) for k in range(36)]
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
