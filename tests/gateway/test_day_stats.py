"""Tests for gateway.day_stats: decoded releases are unbiased with the closed-form noise variance, the
errors-in-variables correction removes the window-sample bias, sums merge like the encrypted aggregate, and the
ridge fit recovers ordinary least squares from clean statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from device import day_release as R
from federation import day_features as F
from federation.errors import SchemaError
from federation.model import HISTORY_STEPS
from federation.privacy_rng import PrivacyRNG
from federation.windows import make_windows
from gateway.day_stats import DayStats, LinearForecaster, aggregate, clean_stats, decode_values, fit_forecaster

DAY0 = 1_767_225_600


def day(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(F.STEPS_PER_DAY)
    g = 140 + 40 * np.sin(2 * np.pi * (t + 20 * seed) / 96) + rng.normal(0, 8, t.size)
    u = np.full(t.size, 0.1)
    c = np.zeros(t.size)
    for meal in rng.choice(np.arange(40, 260), 3, replace=False):
        c[meal] = rng.uniform(30, 90)
        u[meal] += c[meal] / 10
    return g, u, c


@pytest.mark.parametrize("mechanism,delta", [("gram-gauss", 1e-6), ("gram-laplace", 0.0)])
def test_decoded_sum_is_unbiased_with_closed_form_variance(mechanism: str, delta: float) -> None:
    g, u, c = day(0)
    stat = R.statistics(g[None], u[None], c[None], mechanism=mechanism, rng=PrivacyRNG.simulation(0))
    p = R.release_params(mechanism=mechanism, epsilon=4.0, delta=delta)
    n = 3000
    q = R.privatise(np.repeat(stat, n, axis=0), params=p, rng=PrivacyRNG.simulation(1))
    total, var = decode_values(q, params=p)
    assert var == pytest.approx(n * p.noise_variance)
    err = (total - n * stat[0]) / math.sqrt(var)  # standardised error of each svec coordinate
    assert np.abs(err).max() < 6
    assert np.mean(err ** 2) == pytest.approx(1.0, abs=0.35)  # 120 coordinates: chi2/120 within ~3 sd


def test_window_sample_errors_in_variables_correction() -> None:
    p = R.release_params(mechanism="window-sample", epsilon=8.0, delta=1e-6)
    z = np.random.default_rng(3).normal(0, 1, F.DIM)
    z *= 5.0 / np.linalg.norm(z)
    n = 4000
    q = R.privatise(np.tile(z, (n, 1)), params=p, rng=PrivacyRNG.simulation(2))
    total, var = decode_values(q, params=p)
    est = R.unsvec(total) / n
    sd = math.sqrt(var) / n
    assert np.abs(R.svec(est) - R.svec(np.outer(z, z))).max() < 6 * sd
    raw = (q * p.lattice_step).T @ (q * p.lattice_step) / n  # without the correction: biased by var * I
    assert np.diag(raw - np.outer(z, z)).mean() > 20 * sd


def test_clean_fit_is_ordinary_least_squares() -> None:
    days = [day(s) for s in range(6)]
    zs = [F.window_vectors(*d, day_only=True) for d in days]
    zz = np.concatenate([z[v] for z, v in zs])
    stats = clean_stats(np.stack([z[v].T @ z[v] for z, v in zs]))
    model = fit_forecaster(stats)
    ols, *_ = np.linalg.lstsq(zz[:, : F.N_FEATURES], zz[:, F.N_FEATURES:], rcond=None)
    pred_ridge = zz[:, : F.N_FEATURES] @ model.coef
    pred_ols = zz[:, : F.N_FEATURES] @ ols
    assert np.abs(pred_ridge - pred_ols).max() < 1e-3 * np.abs(pred_ols).max()


def test_noisy_fit_recovers_a_planted_linear_model() -> None:
    rng = np.random.default_rng(4)
    beta = rng.normal(0, 0.3, (F.N_FEATURES, 2))
    x = np.concatenate([np.ones((200_000, 1)), rng.normal(0, 1, (200_000, F.N_FEATURES - 1))], axis=1)
    y = x @ beta + rng.normal(0, 0.3, (200_000, 2))
    zz = np.concatenate([x, y], axis=1)
    # As if 100,000 patient-days of about 150 such windows each (trace about 2,400 per day) had been released.
    days = 100_000
    gram = zz.T @ zz * (days * 150 / len(zz))
    p = R.release_params(mechanism="gram-gauss", epsilon=8.0, delta=1e-6)
    var = days * p.noise_variance
    stats = DayStats("gram", days, R.svec(gram) + rng.normal(0, math.sqrt(var), R.SVEC_DIM), var)
    model = fit_forecaster(stats)
    assert np.abs(model.coef - beta).max() < 0.1
    persistence = np.sqrt((y ** 2).mean())
    assert np.sqrt(((x @ model.coef - y) ** 2).mean()) < 0.5 * persistence


def test_merge_equals_adding_and_vector_round_trip() -> None:
    rng = PrivacyRNG.simulation(5)
    rels = R.release_days(*(np.stack(a) for a in zip(*[day(s) for s in range(4)], strict=True)),
                          day_starts=DAY0 + 86400 * np.arange(4), epsilon=8.0, rng=rng)
    whole = aggregate(rels)
    left, right = aggregate(rels[:2]), aggregate(rels[2:])
    merged = left.merge(right)
    np.testing.assert_allclose(merged.total, whole.total)
    assert merged.noise_var == pytest.approx(whole.noise_var) and merged.releases == 4
    back = DayStats.from_vector("gram", whole.to_vector())
    np.testing.assert_allclose(back.total, whole.total)
    assert (back.releases, back.noise_var) == (whole.releases, whole.noise_var)


def test_refusals() -> None:
    rels = R.release_days(*(a[None] for a in day(0)), day_starts=np.array([DAY0]), epsilon=8.0,
                          rng=PrivacyRNG.simulation(6))
    stats = DayStats("gram")
    stats.add(rels[0], key="dev-1/2026-01-01")
    with pytest.raises(SchemaError, match="second release"):
        stats.add(rels[0], key="dev-1/2026-01-01")
    sample = R.release_days(*(a[None] for a in day(0)), day_starts=np.array([DAY0]), epsilon=8.0,
                            mechanism="window-sample", rng=PrivacyRNG.simulation(6))[0]
    with pytest.raises(SchemaError, match="mech"):
        stats.add(sample)
    with pytest.raises(SchemaError, match="family"):
        stats.merge(DayStats("window"))
    with pytest.raises(SchemaError, match="vector"):
        DayStats.from_vector("gram", np.zeros(5))
    with pytest.raises(SchemaError, match="q"):
        decode_values(np.zeros((2, 3)), params=rels[0].params)
    with pytest.raises(SchemaError):
        aggregate([])


def test_forecaster_round_trip_and_window_alignment() -> None:
    model = LinearForecaster(np.random.default_rng(7).normal(0, 0.1, (F.N_FEATURES, 2)), 1.0, 10)
    back = LinearForecaster.from_dict(model.to_dict())
    np.testing.assert_array_equal(back.coef, model.coef)
    g, u, c = day(1)
    pred, valid = model.predict(g, u, c)
    x, _ = make_windows(g)
    assert pred.shape == (len(x), 2) and valid.sum() == len(x)
    zero = LinearForecaster(np.zeros((F.N_FEATURES, 2)), 0.0, 0)
    last = x[:, HISTORY_STEPS - 1:HISTORY_STEPS]  # the last reading (the forecaster's features follow the history)
    np.testing.assert_allclose(zero.predict(g, u, c)[0], np.repeat(last, 2, axis=1))  # = persistence
    with pytest.raises(SchemaError, match="coef"):
        LinearForecaster.from_dict({**model.to_dict(), "coef": [[1.0]]})
    with pytest.raises(SchemaError, match="spec"):
        LinearForecaster.from_dict({**model.to_dict(), "spec": "other"})


def test_adaptive_ridge_grows_as_the_signal_drowns() -> None:
    g, u, c = day(2)
    stat = R.statistics(g[None], u[None], c[None], mechanism="gram-gauss", rng=PrivacyRNG.simulation(0))[0]
    weak = DayStats("gram", 1, stat, 1e12)
    strong = DayStats("gram", 1, stat * 1e4, 1.0)
    assert fit_forecaster(weak).ridge > 3.9 * math.sqrt(1e12) * math.sqrt(F.N_FEATURES)
    assert fit_forecaster(strong).ridge == pytest.approx(math.sqrt(F.N_FEATURES))
