"""Tests for federation.day_features: the insulin/carb action curve against its integral, causality, day locality,
and agreement of the windows with federation.windows.make_windows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from federation import day_features as F
from federation.errors import SchemaError
from federation.model import HISTORY_STEPS
from federation.windows import make_windows


def activity(t: np.ndarray, peak: float, duration: float) -> np.ndarray:
    """The exponential activity curve itself (OpenAPS/Loop): (S/tau^2) t (1 - t/td) e^(-t/tau), by hand."""
    tau = peak * (1 - peak / duration) / (1 - 2 * peak / duration)
    a = 2 * tau / duration
    s = 1 / (1 - a + (1 + a) * math.exp(-duration / tau))
    return s / tau ** 2 * t * (1 - t / duration) * np.exp(-t / tau)


@pytest.mark.parametrize("peak,duration", [(75.0, 300.0), (55.0, 300.0), (45.0, 180.0)])
def test_on_board_is_one_minus_the_integral_of_activity(peak: float, duration: float) -> None:
    t = np.linspace(0, duration, 200_001)
    act = activity(t, peak, duration)
    integral = np.concatenate([[0.0], np.cumsum((act[1:] + act[:-1]) / 2 * np.diff(t))])
    np.testing.assert_allclose(F.action_on_board(t, peak=peak, duration=duration), 1 - integral, atol=1e-8)
    assert t[np.argmax(act)] == pytest.approx(peak, abs=0.01)
    assert F.action_on_board(np.array([0.0, duration, 2 * duration]), peak=peak, duration=duration).tolist() == \
        [1.0, 0.0, 0.0]


def test_hand_computed_insulin_effect() -> None:
    # 2 U above basal at step 10; at anchor 30 (100 min later) on board = 2 * on_board(100), acting in the next
    # 30 min = 2 * (on_board(100) - on_board(130)).
    steps = 60
    g = np.full(steps, 120.0)
    u = np.full(steps, 0.05)
    u[10] += 2.0
    z, _ = F.window_vectors(g, u, np.zeros(steps), day_only=False)
    ob = lambda m: float(F.action_on_board(np.array([m]), peak=75.0, duration=300.0)[0])  # noqa: E731
    names = list(F.NAMES)
    raw = z[30] * F.SCALES
    assert raw[names.index("iob")] == pytest.approx(2 * ob(100))
    assert raw[names.index("ins30")] == pytest.approx(2 * (ob(100) - ob(130)))
    assert raw[names.index("ins60")] == pytest.approx(2 * (ob(100) - ob(160)))
    assert raw[names.index("cob")] == 0.0


def test_windows_match_make_windows() -> None:
    rng = np.random.default_rng(0)
    g = 140 + np.cumsum(rng.normal(0, 3, 600))
    g[rng.random(600) < 0.02] = np.nan
    z, valid = F.window_vectors(g, np.zeros(600), np.zeros(600), day_only=False)
    x, y = make_windows(g)
    assert valid.sum() == len(x)
    last = HISTORY_STEPS - 1  # x: the 2-h glucose history, then the forecaster's features (federation.windows)
    np.testing.assert_allclose(g[valid], x[:, last])
    np.testing.assert_allclose(F.to_mgdl(z[valid][:, F.N_FEATURES:]), y - x[:, last:last + 1], atol=1e-9)
    np.testing.assert_allclose(z[valid][:, 3] * F.SCALES[3], x[:, last] - x[:, last - 3], atol=1e-9)  # d15


def test_features_never_look_ahead() -> None:
    rng = np.random.default_rng(1)
    n = 288
    g = 140 + np.cumsum(rng.normal(0, 3, n))
    u, c = rng.random(n) * 0.2, np.where(rng.random(n) < 0.02, 50.0, 0.0)
    k = 150
    z1, _ = F.window_vectors(g, u, c, day_only=False)
    g2, u2, c2 = g.copy(), u.copy(), c.copy()
    g2[k + 1:] += 50
    u2[k:] += 5  # events in the anchor's own bin come after its reading
    c2[k:] += 80
    z2, _ = F.window_vectors(g2, u2, c2, day_only=False)
    np.testing.assert_array_equal(z1[k, : F.N_FEATURES], z2[k, : F.N_FEATURES])
    assert not np.array_equal(z1[k, F.N_FEATURES:], z2[k, F.N_FEATURES:])  # the targets do see the future


def test_day_only_windows_use_their_own_day() -> None:
    rng = np.random.default_rng(2)
    g = 140 + np.cumsum(rng.normal(0, 3, 2 * 288))
    u, c = rng.random(2 * 288) * 0.2, np.where(rng.random(2 * 288) < 0.02, 60.0, 0.0)
    z1, v1 = F.window_vectors(g, u, c, day_only=True)
    g2, u2, c2 = g.copy(), u.copy(), c.copy()
    g2[:288] = 300.0
    u2[:288] = 3.0
    c2[:288] = 100.0
    z2, v2 = F.window_vectors(g2, u2, c2, day_only=True)
    np.testing.assert_array_equal(z1[288:], z2[288:])
    np.testing.assert_array_equal(v1[288:], v2[288:])
    assert v1[288: 288 + 23].sum() == 0 and v1[288 + 276:].sum() == 0  # windows stay inside the day
    with pytest.raises(SchemaError, match="whole days"):
        F.window_vectors(g[:300], u[:300], c[:300], day_only=True)


def test_shape_mismatch_names_the_field() -> None:
    with pytest.raises(SchemaError, match="insulin"):
        F.window_vectors(np.zeros(288), np.zeros(287), np.zeros(288), day_only=True)
