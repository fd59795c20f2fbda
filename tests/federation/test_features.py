"""Insulin and carb encodings against hand-computed curves; the device's features equal the gateway's."""

from __future__ import annotations

import math

import numpy as np
import pytest

from federation import features as f
from federation.features import FEATURE_NAMES, EventHistory, features_at, grid_features
from federation.series import PatientSeries
from federation.windows import series_windows

T0_BIN = 1_767_225_600 // 300  # 2026-01-01 00:00 UTC


def col(name: str) -> int:
    return FEATURE_NAMES.index(name)


def hand_iob(t: float, tp: float = 75.0, td: float = 360.0) -> float:
    """The exponential insulin curve written out again from Maksimovic's formulas (LoopKit/Loop #388)."""
    if t <= 0:
        return 1.0
    if t >= td:
        return 0.0
    tau = tp * (1 - tp / td) / (1 - 2 * tp / td)
    a = 2 * tau / td
    s = 1 / (1 - a + (1 + a) * math.exp(-td / tau))
    return 1 - s * (1 - a) * ((t * t / (tau * td * (1 - a)) - t / tau - 1) * math.exp(-t / tau) + 1)


def test_insulin_curve_matches_hand_computed_values() -> None:
    # By hand (tp 75, td 360): tau = 75 x 285/210 = 101.786 min, a = 0.5655, S = 2.0829, so 75 min after a dose
    # 1 - 0.9051 x ((0.35328 - 0.73684 - 1) e^-0.73684 + 1) = 0.6943 of it is still on board.
    assert f.insulin_remaining(75.0) == pytest.approx(0.6943, abs=2e-4)
    for t in (0.0, 5.0, 30.0, 60.0, 120.0, 180.0, 240.0, 300.0, 355.0, 360.0, 400.0):
        assert f.insulin_remaining(t) == pytest.approx(hand_iob(t), abs=1e-12)
    assert f.insulin_remaining(-5.0) == 1.0 and f.insulin_remaining(360.0) == 0.0


def test_insulin_activity_peaks_at_75_min_integrates_to_one_and_is_the_iob_slope() -> None:
    t = np.linspace(0, 360, 72_001)
    act = f.insulin_activity(t)
    assert t[np.argmax(act)] == pytest.approx(75.0, abs=0.01)
    assert np.trapezoid(act, t) == pytest.approx(1.0, abs=1e-6)
    slope = -np.gradient(f.insulin_remaining(t), t)
    np.testing.assert_allclose(slope[10:-10], act[10:-10], atol=1e-7)


def test_carb_absorption_matches_hovorka_by_hand() -> None:
    # (1 + t/40) e^(-t/40): 2/e at 40 min, 3/e^2 at 80 min, 5/e^4 at 160 min
    assert f.carbs_remaining(40.0) == pytest.approx(2 / math.e, abs=1e-12)
    assert f.carbs_remaining(80.0) == pytest.approx(3 / math.e ** 2, abs=1e-12)
    assert f.carbs_remaining(160.0) == pytest.approx(5 / math.e ** 4, abs=1e-12)
    assert f.carbs_remaining(0.0) == 1.0 and f.carbs_remaining(360.0) == 0.0
    t = np.linspace(0, 2000, 200_001)
    assert t[np.argmax(f.carbs_rate(t))] == pytest.approx(40.0, abs=0.02)  # peak appearance at t_max,G
    assert np.trapezoid(f.carbs_rate(t), t) == pytest.approx(1.0, abs=1e-6)


def one_meal(units: float = 4.0, grams: float = 50.0) -> EventHistory:
    t = np.array([T0_BIN * 300])
    return EventHistory(t, np.array([units]), t, np.array([grams]))


def test_grid_features_of_one_bolus_and_one_meal_by_hand() -> None:
    feats = grid_features(one_meal(), first_bin=T0_BIN, n_bins=100)
    for k in (0, 6, 12, 15, 40, 71, 72, 90):
        m = 5.0 * k
        assert feats[k, col("iob_u")] == pytest.approx(4.0 * hand_iob(m), abs=1e-9)
        assert feats[k, col("insulin_next30_u")] == pytest.approx(4.0 * (hand_iob(m) - hand_iob(m + 30)), abs=1e-9)
        carb_left = 0.0 if m >= 360 else (1 + m / 40) * math.exp(-m / 40)
        assert feats[k, col("cob_g")] == pytest.approx(50.0 * carb_left, abs=1e-9)
        assert feats[k, col("since_meal")] == pytest.approx(min(m, 360.0) / 360.0)
        assert feats[k, col("since_bolus")] == pytest.approx(min(m, 360.0) / 360.0)
    # TDD: 4 U known over k + 1 bins, extrapolated to 24 h from at least 3 h: 4 x 288 / max(k + 1, 36)
    assert feats[10, col("tdd_u")] == pytest.approx(4.0 * 288 / 36)
    assert feats[99, col("tdd_u")] == pytest.approx(4.0 * 288 / 100)
    assert feats[:, col("carb_ratio")] == pytest.approx(np.full(100, 50.0 / 4.0))  # 50 g per 4 U bolus
    isf = 1800.0 / (4.0 * 288 / 36)
    assert feats[6, col("insulin_effect30_mgdl")] == pytest.approx(-4.0 * (hand_iob(30) - hand_iob(60)) * isf)
    carbs30 = 50.0 * ((1 + 30 / 40) * math.exp(-30 / 40) - (1 + 60 / 40) * math.exp(-60 / 40))
    assert feats[6, col("carb_effect30_mgdl")] == pytest.approx(carbs30 * isf / 12.5)
    assert feats[0, col("tod_sin")] == pytest.approx(0.0, abs=1e-12) and feats[0, col("tod_cos")] == 1.0
    assert feats[72, col("tod_sin")] == pytest.approx(1.0)  # 06:00
    assert (feats[:, col("events_known")] == 1.0).all()


def test_no_events_means_none_known_not_none_taken() -> None:
    empty = EventHistory(*(np.empty(0),) * 4)
    feats = grid_features(empty, first_bin=T0_BIN, n_bins=10)
    assert (feats[:, col("events_known")] == 0).all() and (feats[:, col("iob_u")] == 0).all()
    assert (feats[:, col("since_meal")] == 1.0).all()


def pump_patient(days: float = 2.0, seed: int = 0) -> EventHistory:
    """Basal every 5 min, meal boluses, meals: what the cohort's insulin pump delivers."""
    rng = np.random.default_rng(seed)
    bins = np.arange(T0_BIN, T0_BIN + int(days * 288))
    units = np.full(len(bins), 0.08)
    meals = rng.choice(len(bins), size=int(days * 4), replace=False)
    grams = rng.uniform(10, 90, size=len(meals))
    units[meals] += grams / 12.0
    return EventHistory(bins * 300, units, bins[meals] * 300 + 60, grams)


def test_net_insulin_of_a_pump_removes_its_basal() -> None:
    ev = pump_patient()
    feats = grid_features(EventHistory(ev.insulin_times, np.full(len(ev.insulin_times), 0.08),
                                       np.empty(0), np.empty(0)), first_bin=T0_BIN + 100, n_bins=200)
    np.testing.assert_allclose(feats[:, col("iob_u")], 0.0, atol=1e-12)  # basal only: no net insulin on board
    assert feats[0, col("tdd_u")] == pytest.approx(0.08 * 288)


def test_glucose_context_by_hand() -> None:
    grid = np.array([100.0, np.nan, 60.0, 200.0] + [150.0] * 300)
    ctx = f.glucose_context(grid)
    # after 4 bins: readings 100, 60, 200 -> mean 120, SD sqrt(((-20)^2 + 60^2 + 80^2) / 3), 1/3 below 70 and above 180
    np.testing.assert_allclose(ctx[3], [120.0, np.sqrt((400 + 3600 + 6400) / 3), 1 / 3, 1 / 3])
    assert ctx[0].tolist() == [100.0, 0.0, 0.0, 0.0]
    # 24 h later the first bins have left the window: only 150s
    np.testing.assert_allclose(ctx[291], [150.0, 0.0, 0.0, 0.0], atol=1e-6)
    assert f.glucose_context(np.full(3, np.nan))[:, 0].tolist() == [150.0] * 3  # nothing known: neutral


def test_device_features_equal_the_gateways_at_every_bin() -> None:
    ev = pump_patient(days=3.0, seed=1)
    rng = np.random.default_rng(3)
    glucose = 140 + 60 * np.sin(np.arange(3 * 288) / 20.0) + rng.normal(0, 10, 3 * 288)
    glucose[rng.choice(3 * 288, 40, replace=False)] = np.nan  # gaps
    gateway = grid_features(ev, first_bin=T0_BIN, n_bins=3 * 288, glucose=glucose)
    times = (T0_BIN + np.arange(3 * 288)) * 300
    for k in range(f.HISTORY_BINS, 3 * 288, 37):
        t_last = (T0_BIN + k) * 300 + 17  # any time inside the bin
        keep_i = ev.insulin_times >= (T0_BIN + k - f.HISTORY_BINS) * 300  # what a device keeps
        keep_c = ev.carb_times >= (T0_BIN + k - f.HISTORY_BINS) * 300
        device = EventHistory(ev.insulin_times[keep_i & (ev.insulin_times <= t_last)],
                              ev.insulin_units[keep_i & (ev.insulin_times <= t_last)],
                              ev.carb_times[keep_c & (ev.carb_times <= t_last)],
                              ev.carb_grams[keep_c & (ev.carb_times <= t_last)])
        seen = ~np.isnan(glucose[:k + 1]) & (times[:k + 1] > t_last - 86400)  # a device keeps 24 h of readings
        got = features_at(t_last, device, glucose_times=times[:k + 1][seen], glucose_values=glucose[:k + 1][seen])
        np.testing.assert_allclose(got, gateway[k], rtol=1e-9, atol=1e-9)


def test_windows_count_insulin_given_before_the_first_reading() -> None:
    start = T0_BIN * 300
    s = PatientSeries(times=start + 3600 + np.arange(40) * 300, glucose=np.full(40, 150.0),
                      insulin_times=np.array([start]), insulin_units=np.array([5.0]))
    x, _y, t = series_windows(s)
    first_minutes = (t[0] - start) / 60.0
    assert x[0, 24 + col("iob_u")] == pytest.approx(5.0 * hand_iob(first_minutes))
