"""Tests for device.day_release and device.discrete_noise: the sensitivity bound on adversarial days, the privacy
accounting, exact integer noise against its closed-form law, and the wire message against tampering.

Statistical checks use seeded simulation-mode randomness and tolerances of 5-6 standard errors (or chi-square
at p < 1e-6), so a correct sampler fails with probability below about 1e-6 per check.
"""

from __future__ import annotations

import math

import cbor2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device import day_release as R
from device.discrete_noise import bernoulli_exp, discrete_gaussian, discrete_laplace, uniform_below
from federation import day_features as F
from federation.errors import SchemaError
from federation.privacy_rng import PrivacyRNG
from federation.series import PatientSeries

DAY0 = 1_767_225_600  # 2026-01-01T00:00:00Z
STEPS = F.STEPS_PER_DAY


def typical_day(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A plausible day: glucose waves with meals, basal insulin plus meal boluses."""
    rng = np.random.default_rng(seed)
    t = np.arange(STEPS)
    g = 140 + 40 * np.sin(2 * np.pi * t / 96) + rng.normal(0, 8, STEPS)
    u = np.full(STEPS, 0.1)
    c = np.zeros(STEPS)
    for meal, grams in ((90, 50.0), (150, 70.0), (230, 80.0)):
        c[meal] = grams
        u[meal] += grams / 10
    return g, u, c


def adversarial_days() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Days an attacker or a broken sensor could produce: extremes, spikes, gaps, nothing at all."""
    g, u, c = typical_day()
    alt = np.where(np.arange(STEPS) % 2 == 0, 40.0, 400.0)
    return [
        (g, u, c),
        (np.full(STEPS, 400.0), np.zeros(STEPS), np.zeros(STEPS)),
        (np.full(STEPS, 40.0), np.full(STEPS, 1e6), np.full(STEPS, 1e6)),  # clipped to the per-step maxima
        (alt, np.where(np.arange(STEPS) % 3 == 0, 25.0, 0.0), np.where(np.arange(STEPS) % 5 == 0, 200.0, 0.0)),
        (np.full(STEPS, np.nan), np.zeros(STEPS), np.zeros(STEPS)),  # no readings: no windows
        (np.where(np.arange(STEPS) < 60, 400.0, 40.0), np.zeros(STEPS), np.zeros(STEPS)),
        (np.full(STEPS, -1e9), np.zeros(STEPS), np.zeros(STEPS)),  # out of range: clipped to 40
    ]


def grams(days: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    g, u, c = (np.stack(x) for x in zip(*days, strict=True))
    return R.day_grams(g, u, c)


# ------------------------------------------------------------------------------------------------- sensitivity


def test_trace_cap_and_psd_hold_on_adversarial_days() -> None:
    gs = grams(adversarial_days())
    for g in gs:
        assert np.trace(g) <= R.TRACE_CAP
        assert np.linalg.eigvalsh(g).min() >= -1e-9 * R.TRACE_CAP
    assert np.abs(gs[4]).max() == 0.0  # a day without readings releases noise only


def test_whole_day_replaced_moves_the_statistic_within_the_declared_sensitivity() -> None:
    days = adversarial_days()
    sv = R.svec(grams(days))
    gauss = R.release_params(mechanism="gram-gauss", epsilon=8.0, delta=1e-6)
    lap = R.release_params(mechanism="gram-laplace", epsilon=8.0, delta=0.0)
    worst_l2 = worst_l1 = 0.0
    for i in range(len(days)):
        for j in range(len(days)):
            d = sv[i] - sv[j]
            worst_l2, worst_l1 = max(worst_l2, np.linalg.norm(d)), max(worst_l1, np.abs(d).sum())
            qg = np.rint(sv[i] / gauss.lattice_step) - np.rint(sv[j] / gauss.lattice_step)
            ql = np.rint(sv[i] / lap.lattice_step) - np.rint(sv[j] / lap.lattice_step)
            assert np.linalg.norm(qg) <= gauss.sensitivity
            assert np.abs(ql).sum() <= lap.sensitivity
    assert worst_l2 <= math.sqrt(2) * R.TRACE_CAP
    assert worst_l1 <= 2 * R.TRACE_CAP * (1 + (F.DIM - 1) / math.sqrt(2))
    assert worst_l2 > 0.5 * R.TRACE_CAP  # the bound is not vacuous: real days come close to it


def test_svec_is_an_isometry() -> None:
    a = np.random.default_rng(0).normal(size=(F.DIM, F.DIM))
    a = a + a.T
    assert np.linalg.norm(R.svec(a)) == pytest.approx(np.linalg.norm(a))
    np.testing.assert_allclose(R.unsvec(R.svec(a)), a)


def test_sensitivity_bound_is_tight_for_psd_matrices() -> None:
    # Two rank-one days along orthogonal directions reach sqrt(2) T exactly: the bound cannot be lowered.
    a, b = np.zeros((F.DIM, F.DIM)), np.zeros((F.DIM, F.DIM))
    a[1, 1], b[2, 2] = R.TRACE_CAP, R.TRACE_CAP
    assert np.linalg.norm(R.svec(a) - R.svec(b)) == pytest.approx(math.sqrt(2) * R.TRACE_CAP)


@st.composite
def any_day(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A day from a few drawn knobs, spanning normal, extreme, out-of-range and gappy data."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    level = draw(st.floats(-1e4, 1e4))
    spread = draw(st.floats(0, 1e4))
    g = level + spread * rng.standard_normal(STEPS)
    g[rng.random(STEPS) < draw(st.floats(0, 1))] = np.nan
    u = draw(st.floats(0, 1e3)) * rng.random(STEPS) ** draw(st.floats(1, 50))
    c = draw(st.floats(0, 1e4)) * (rng.random(STEPS) < draw(st.floats(0, 1)))
    return g, u, c


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=any_day(), b=any_day())
def test_any_two_days_stay_within_sqrt2_trace_cap(a, b) -> None:  # noqa: ANN001
    gs = grams([a, b])
    sv = R.svec(gs)
    assert np.linalg.norm(sv[0] - sv[1]) <= math.sqrt(2) * R.TRACE_CAP * (1 + 1e-9)
    for g in gs:
        assert np.isfinite(g).all()
        assert np.trace(g) <= R.TRACE_CAP


def test_out_of_range_values_are_clipped_not_amplified() -> None:
    g, u, c = typical_day()
    spiky = g.copy()
    spiky[100] = 5e4
    capped = g.copy()
    capped[100] = 400.0
    a, b = grams([(spiky, u, c), (capped, u, c)])
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("field,bad", [("insulin", np.inf), ("carbs", np.nan)])
def test_non_finite_amounts_raise_naming_the_field(field: str, bad: float) -> None:
    g, u, c = typical_day()
    arrays = {"glucose": g, "insulin": u.copy(), "carbs": c.copy()}
    arrays[field][10] = bad
    with pytest.raises(SchemaError, match=field):
        R.day_grams(arrays["glucose"][None], arrays["insulin"][None], arrays["carbs"][None])


def test_infinite_glucose_raises() -> None:
    g, u, c = typical_day()
    g[5] = np.inf
    with pytest.raises(SchemaError, match="glucose"):
        R.day_grams(g[None], u[None], c[None])


def test_a_day_release_uses_that_day_only() -> None:
    g, u, c = typical_day()
    other = typical_day(seed=3)
    series_a = PatientSeries(np.arange(3 * STEPS) * 300 + DAY0 - 86400, np.concatenate([other[0], g, other[0]]),
                             np.arange(3 * STEPS) * 300 + DAY0 - 86400, np.concatenate([other[1], u, other[1]]),
                             np.arange(3 * STEPS) * 300 + DAY0 - 86400, np.concatenate([other[2], c, other[2]]))
    grid = F.day_grid(series_a, day_start=DAY0)
    np.testing.assert_array_equal(grid.glucose, g)
    np.testing.assert_array_equal(grid.insulin, u)
    np.testing.assert_array_equal(grid.carbs, c)
    assert grid.day == "2026-01-01"
    with pytest.raises(SchemaError, match="day_start"):
        F.day_grid(series_a, day_start=DAY0 + 1)


# ------------------------------------------------------------------------------------------------- accounting


def analytic_gaussian_delta(ratio: float, epsilon: float) -> float:
    """Exact delta of the continuous Gaussian mechanism with sigma/sensitivity = ratio (Balle and Wang, ICML 2018,
    Theorem 8): Phi(1/(2r) - eps r) - e^eps Phi(-1/(2r) - eps r). An independent check of the calibration."""
    phi = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731
    return phi(1 / (2 * ratio) - epsilon * ratio) - math.exp(epsilon) * phi(-1 / (2 * ratio) - epsilon * ratio)


@pytest.mark.parametrize("mechanism", ["gram-gauss", "window-sample"])
@pytest.mark.parametrize("epsilon", [0.5, 1.0, 2.0, 4.0, 8.0, 16.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-6, 1e-9])
def test_gaussian_calibration_meets_the_declared_budget(mechanism: str, epsilon: float, delta: float) -> None:
    p = R.release_params(mechanism=mechanism, epsilon=epsilon, delta=delta)
    assert p.epsilon_actual <= epsilon
    assert p.rho == pytest.approx(p.sensitivity ** 2 / (2 * p.sigma2))
    assert R.zcdp_delta(rho=p.rho, epsilon=epsilon) <= delta * (1 + 1e-9)
    # zCDP's bound dominates the exact continuous-Gaussian delta at the same noise.
    assert analytic_gaussian_delta(math.sqrt(p.sigma2) / p.sensitivity, epsilon) <= delta
    # ... and is not wastefully loose: under 12% more noise than the exact calibration would need.
    assert analytic_gaussian_delta(0.88 * math.sqrt(p.sigma2) / p.sensitivity, epsilon) > delta


def test_zcdp_conversion_known_values() -> None:
    # Standard bound (Bun and Steinke 2016): eps <= rho + 2 sqrt(rho log(1/delta)); the CKS bound is tighter.
    for rho in (0.01, 0.1, 1.0, 10.0):
        eps = R.zcdp_epsilon(rho=rho, delta=1e-6)
        assert rho < eps < rho + 2 * math.sqrt(rho * math.log(1e6))
        assert R.zcdp_delta(rho=rho, epsilon=eps) == pytest.approx(1e-6, rel=1e-6)
    # rho = 1/2 is N(0, 1) noise on sensitivity 1; its exact delta at eps = 3 is below the zCDP bound's.
    assert analytic_gaussian_delta(1.0, 3.0) < R.zcdp_delta(rho=0.5, epsilon=3.0)


@pytest.mark.parametrize("epsilon", [0.05, 0.5, 1.0, 8.0, 64.0])
def test_laplace_is_pure_and_within_budget(epsilon: float) -> None:
    p = R.release_params(mechanism="gram-laplace", epsilon=epsilon, delta=0.0)
    num, den = p.laplace_scale
    assert p.delta == 0.0 and p.rho is None
    assert p.sensitivity * den / num <= epsilon  # geometric mechanism: eps = L1 sensitivity / scale
    assert p.sensitivity * den / num > 0.999 * epsilon


def test_patient_level_composition() -> None:
    rel = R.DayRelease("2026-01-01", "gram-gauss", 8.0, 1e-6, (0,) * R.SVEC_DIM)
    cost = rel.cost()
    assert (cost.unit, cost.epsilon, cost.delta) == ("patient-day", 8.0, 1e-6)
    eps15, d15 = R.patient_level(cost=cost, days=15, delta=1e-5)
    assert d15 == 1e-5 and eps15 == pytest.approx(R.zcdp_epsilon(rho=15 * cost.rho, delta=1e-5))
    assert 8.0 < eps15 < 15 * 8.0  # better than summing epsilons, worse than one day
    lap = R.DayRelease("2026-01-01", "gram-laplace", 2.0, 0.0, (0,) * R.SVEC_DIM).cost()
    assert R.patient_level(cost=lap, days=15, delta=1e-5) == (30.0, 0.0)


@pytest.mark.parametrize("kw,field", [
    ({"mechanism": "laplace", "epsilon": 8.0, "delta": 1e-6}, "mechanism"),
    ({"mechanism": "gram-gauss", "epsilon": 0.0, "delta": 1e-6}, "epsilon"),
    ({"mechanism": "gram-gauss", "epsilon": 1e3, "delta": 1e-6}, "epsilon"),
    ({"mechanism": "gram-gauss", "epsilon": float("nan"), "delta": 1e-6}, "epsilon"),
    ({"mechanism": "gram-gauss", "epsilon": 8.0, "delta": 0.1}, "delta"),
    ({"mechanism": "gram-gauss", "epsilon": True, "delta": 1e-6}, "epsilon"),
])
def test_bad_parameters_raise_naming_the_field(kw: dict, field: str) -> None:
    with pytest.raises(R.DayReleaseError, match=field):
        R.release_params(**kw)


# ------------------------------------------------------------------------------------------------- exact noise


def chi_square_ok(samples: np.ndarray, pmf: dict[int, float]) -> bool:
    """Pearson chi-square over the support bins with expected count >= 20 plus one tail bin; p < 1e-6 fails."""
    n = len(samples)
    keys = [k for k, p in pmf.items() if p * n >= 20]
    counts = np.array([(samples == k).sum() for k in keys] + [(~np.isin(samples, keys)).sum()], dtype=float)
    exp = np.array([pmf[k] * n for k in keys] + [n * (1 - sum(pmf[k] for k in keys))])
    stat = ((counts - exp) ** 2 / exp).sum()
    dof = len(keys)
    return stat < dof + 7.0 * math.sqrt(2 * dof) + 25  # far beyond the 1e-6 quantile for these dofs


@pytest.mark.parametrize("sigma2", [1, 3, 10])
def test_discrete_gaussian_matches_its_pmf(sigma2: int) -> None:
    ys = discrete_gaussian(sigma2=sigma2, size=200_000, rng=PrivacyRNG.simulation(sigma2))
    support = range(-12 * int(math.sqrt(sigma2)) - 5, 12 * int(math.sqrt(sigma2)) + 6)
    w = {k: math.exp(-k * k / (2 * sigma2)) for k in support}
    z = sum(w.values())
    assert chi_square_ok(ys, {k: v / z for k, v in w.items()})


@pytest.mark.parametrize("num,den", [(1, 1), (5, 2), (7, 3)])
def test_discrete_laplace_matches_its_pmf(num: int, den: int) -> None:
    ys = discrete_laplace(scale_num=num, scale_den=den, size=200_000, rng=PrivacyRNG.simulation(num))
    q = math.exp(-den / num)
    pmf = {k: (1 - q) / (1 + q) * q ** abs(k) for k in range(-200, 201)}
    assert chi_square_ok(ys, pmf)


def test_large_sigma_moments() -> None:
    s2 = 4096 ** 2
    ys = discrete_gaussian(sigma2=s2, size=400_000, rng=PrivacyRNG.simulation(11)).astype(float)
    se_mean = math.sqrt(s2 / len(ys))
    assert abs(ys.mean()) < 6 * se_mean
    assert ys.var() == pytest.approx(s2, rel=6 * math.sqrt(2 / len(ys)))


@pytest.mark.parametrize("num,den", [(0, 1), (1, 3), (3, 2), (7, 2), (1, 1)])
def test_bernoulli_exp_frequency(num: int, den: int) -> None:
    n = 200_000
    hits = bernoulli_exp(np.full(n, num), np.full(n, den), PrivacyRNG.simulation(num * 10 + den)).mean()
    p = math.exp(-num / den)
    assert abs(hits - p) <= 6 * math.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-12


def test_bernoulli_exp_huge_gamma_takes_the_exact_path() -> None:
    num = np.array([10 ** 30, 2 ** 70, 0], dtype=object)
    out = bernoulli_exp(num, np.array([3, 7, 5]), PrivacyRNG.simulation(1))
    assert out.tolist() == [False, False, True]


def test_uniform_below_is_uniform() -> None:
    xs = uniform_below(np.full(300_000, 6), PrivacyRNG.simulation(2))
    assert chi_square_ok(xs, dict.fromkeys(range(6), 1 / 6))
    assert uniform_below(np.array([1, 1]), PrivacyRNG.simulation(3)).tolist() == [0, 0]


def test_secure_randomness_runs_and_simulation_is_reproducible() -> None:
    g, u, c = typical_day()
    sec, cost = R.release_day(F.DayGrid(DAY0, g, u, c), epsilon=8.0, rng=PrivacyRNG.secure())
    assert cost.unit == "patient-day" and len(sec.values) == R.SVEC_DIM
    a, _ = R.release_day(F.DayGrid(DAY0, g, u, c), epsilon=8.0, rng=PrivacyRNG.simulation(5))
    b, _ = R.release_day(F.DayGrid(DAY0, g, u, c), epsilon=8.0, rng=PrivacyRNG.simulation(5))
    assert a == b
    with pytest.raises(TypeError):
        R.release_day(F.DayGrid(DAY0, g, u, c), epsilon=8.0, rng=np.random.default_rng(0))  # type: ignore[arg-type]


def test_privatise_is_unbiased_with_the_closed_form_variance() -> None:
    g, u, c = typical_day()
    stat = R.statistics(g[None], u[None], c[None], mechanism="gram-gauss", rng=PrivacyRNG.simulation(0))
    p = R.release_params(mechanism="gram-gauss", epsilon=4.0, delta=1e-6)
    n = 4000
    q = R.privatise(np.repeat(stat, n, axis=0), params=p, rng=PrivacyRNG.simulation(9))
    assert q.dtype == np.int64
    est = q * p.lattice_step
    sd = math.sqrt(p.noise_variance)
    assert np.abs(est.mean(axis=0) - stat[0]).max() < 6 * sd / math.sqrt(n) + p.lattice_step
    assert est.var(axis=0).mean() == pytest.approx(p.noise_variance, rel=0.02)


# ------------------------------------------------------------------------------------------------- wire


def release() -> R.DayRelease:
    g, u, c = typical_day()
    return R.release_day(F.DayGrid(DAY0, g, u, c), epsilon=8.0, rng=PrivacyRNG.simulation(1))[0]


def test_cbor_round_trip_and_integer_payload() -> None:
    rel = release()
    blob = cbor2.dumps(rel.to_dict())
    assert len(blob) < 800
    back = R.DayRelease.from_dict(cbor2.loads(blob))
    assert back == rel
    assert all(type(v) is int for v in back.values)


@pytest.mark.parametrize("mutate,field", [
    (lambda d: d.update(v=2), "v"),
    (lambda d: d.update(spec="wearfed.day-features/0"), "spec"),
    (lambda d: d.update(unit="reading"), "unit"),
    (lambda d: d.update(day="2026-13-01"), "day"),
    (lambda d: d.update(day="yesterday"), "day"),
    (lambda d: d.update(mech="none"), "mech"),
    (lambda d: d.update(eps=1000.0), "eps"),
    (lambda d: d.update(q=d["q"][:-1]), "q"),
    (lambda d: d["q"].__setitem__(3, 1.5), r"q\[3\]"),
    (lambda d: d["q"].__setitem__(0, True), r"q\[0\]"),
    (lambda d: d["q"].__setitem__(7, 2 ** 60), r"q\[7\]"),
    (lambda d: d.update(mech="gram-laplace", delta=1e-6), "delta"),
])
def test_tampered_messages_are_refused_naming_the_field(mutate, field: str) -> None:  # noqa: ANN001
    doc = release().to_dict()
    mutate(doc)
    with pytest.raises(SchemaError, match=field):
        R.DayRelease.from_dict(doc)


def test_day_start_must_be_midnight() -> None:
    g, u, c = typical_day()
    with pytest.raises(R.DayReleaseError, match="day_starts"):
        R.release_days(g[None], u[None], c[None], day_starts=np.array([DAY0 + 300]), epsilon=8.0,
                       rng=PrivacyRNG.simulation(0))


def test_non_map_is_refused() -> None:
    with pytest.raises(SchemaError):
        R.DayRelease.from_dict([1, 2, 3])


# ------------------------------------------------------------------------------------------------- window-sample


def test_window_sample_releases_a_real_clipped_window() -> None:
    g, u, c = typical_day()
    z, valid = F.window_vectors(g, u, c, day_only=True)
    s = R.day_samples(g[None], u[None], c[None], rng=PrivacyRNG.simulation(4))[0, 0]
    scale = min(1.0, math.sqrt(R.SAMPLE_CLIP_SQ / (z[valid] ** 2).sum(axis=1).max()))
    assert np.linalg.norm(s) <= math.sqrt(R.SAMPLE_CLIP_SQ) * (1 + 1e-12)
    # s is one of the day's windows, possibly shrunk by its own clip factor (>= the smallest factor)
    cos = (z[valid] @ s) / (np.linalg.norm(z[valid], axis=1) * np.linalg.norm(s))
    assert cos.max() == pytest.approx(1.0) and scale > 0
    empty = R.day_samples(np.full((1, STEPS), np.nan), u[None], c[None], rng=PrivacyRNG.simulation(4))
    assert not empty.any()
