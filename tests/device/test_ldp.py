"""Tests for device.ldp: unbiasedness, variance closed forms, the epsilon-LDP density ratio, ranges, errors.

Statistical checks use seeded generators and tolerances of 5-6 standard errors, so a correct mechanism
fails with probability below 1e-6 per check, while a wrong constant (probability, bound, scale) moves the
estimate by many standard errors.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device.ldp import (
    HYBRID_EPS_STAR,
    MECHANISMS,
    LDPError,
    LDPSpec,
    grid_step,
    output_bound,
    output_density,
    output_pmf,
    privatize,
    variance,
    worst_case_variance,
)
from federation.ldp_range import EPSILON_FLOOR, epsilon_ceiling
from federation.privacy_rng import PrivacyRNG

EPS_GRID = (0.3, 0.5, 1.0, 2.0, 4.0, 8.0)  # 0.3 < eps* exercises the hybrid's Duchi-only branch
X_GRID = (-1.0, -0.4, 0.0, 0.55, 1.0)


def duchi_c(eps: float) -> float:
    return (math.exp(eps) + 1) / (math.exp(eps) - 1)


def pm_c(eps: float) -> float:
    return (math.exp(eps / 2) + 1) / (math.exp(eps / 2) - 1)


def raw_samples(mech: str, eps: float, x: float, n: int, seed: int) -> np.ndarray:
    """n outputs for input x on the [-1, 1] scale (spec [-1, 1] makes privatize's mapping the identity)."""
    spec = LDPSpec(mechanism=mech, epsilon=eps, lo=-1.0, hi=1.0)
    return privatize(np.full(n, x), spec=spec, rng=np.random.default_rng(seed))


# ----------------------------------------------------------------------------------------------------------
# Unbiasedness


@pytest.mark.parametrize("mech", MECHANISMS)
@pytest.mark.parametrize("eps", (0.3, 1.0, 4.0, 8.0))
@pytest.mark.parametrize("x", X_GRID)
def test_unbiased_on_unit_scale(mech: str, eps: float, x: float) -> None:
    n = 100_000
    y = raw_samples(mech, eps, x, n, seed=MECHANISMS.index(mech) * 10_000 + int(eps * 100) + X_GRID.index(x))
    se = math.sqrt(variance(x, mechanism=mech, epsilon=eps) / n)
    assert abs(y.mean() - x) <= 5 * se


@pytest.mark.parametrize("mech", MECHANISMS)
@pytest.mark.parametrize("value", (20.0, 40.0, 123.4, 250.0, 400.0, 555.0))
def test_unbiased_for_clipped_value_in_mg_dl(mech: str, value: float) -> None:
    lo, hi, eps, n = 40.0, 400.0, 2.0, 200_000
    spec = LDPSpec(mechanism=mech, epsilon=eps, lo=lo, hi=hi)
    y = privatize(np.full(n, value), spec=spec, rng=np.random.default_rng(7))
    clipped = min(max(value, lo), hi)
    half = (hi - lo) / 2
    t = (clipped - lo) / half - 1
    se = half * math.sqrt(variance(t, mechanism=mech, epsilon=eps) / n)
    assert abs(y.mean() - clipped) <= 5 * se


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    mech=st.sampled_from(MECHANISMS),
    eps=st.floats(0.05, 8.0),
    lo=st.floats(-50.0, 100.0),
    width=st.floats(1.0, 500.0),
    value=st.floats(-200.0, 800.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_unbiased_property(mech: str, eps: float, lo: float, width: float, value: float, seed: int) -> None:
    n = 20_000
    hi = lo + width
    spec = LDPSpec(mechanism=mech, epsilon=eps, lo=lo, hi=hi)
    y = privatize(np.full(n, value), spec=spec, rng=np.random.default_rng(seed))
    assert y.shape == (n,) and y.dtype == np.float64 and np.all(np.isfinite(y))
    clipped = min(max(value, lo), hi)
    half = width / 2
    t = min(max((clipped - lo) / half - 1, -1.0), 1.0)
    se = half * math.sqrt(variance(t, mechanism=mech, epsilon=eps) / n)
    assert abs(y.mean() - clipped) <= 5.5 * se + 1e-9 * width


# ----------------------------------------------------------------------------------------------------------
# Variance: empirical vs closed form, worst cases vs FACTS.md


@pytest.mark.parametrize("mech", MECHANISMS)
@pytest.mark.parametrize("eps", EPS_GRID)
@pytest.mark.parametrize("x", (0.0, 0.55, 1.0))
def test_empirical_variance_matches_closed_form(mech: str, eps: float, x: float) -> None:
    # The mean of (y - x)^2 estimates the variance (y is unbiased); its standard error is estimated from the
    # same sample, so the 5-SE band adapts to each mechanism's kurtosis: about 1-2% of the variance for most
    # cases at n = 400k, wider only where the squared error is dominated by rare outputs (Duchi at |x| = 1
    # and large eps puts ~1e-4 of its mass on the far atom).
    n = 400_000
    sq = (raw_samples(mech, eps, x, n, seed=1234) - x) ** 2
    expected = variance(x, mechanism=mech, epsilon=eps)
    rounding = grid_step(mechanism=mech, epsilon=eps) ** 2 / 4  # what the grid rounding adds, at most
    se = sq.std() / math.sqrt(n)
    assert expected - 5 * se - 1e-9 * expected <= sq.mean() <= expected + rounding + 5 * se + 1e-9 * expected


def test_variance_formulas_from_the_brief() -> None:
    for eps in EPS_GRID:
        for x in np.linspace(-1, 1, 9):
            assert variance(x, mechanism="laplace", epsilon=eps) == pytest.approx(8 / eps**2)
            assert variance(x, mechanism="duchi", epsilon=eps) == pytest.approx(duchi_c(eps) ** 2 - x**2)
            e2 = math.exp(eps / 2)
            pm = x**2 / (e2 - 1) + (e2 + 3) / (3 * (e2 - 1) ** 2)
            assert variance(x, mechanism="piecewise", epsilon=eps) == pytest.approx(pm)


# FACTS.md (Privacy): worst-case variance on [-1, 1], as printed (compared to the printed precision).
FACTS_TABLE = {
    0.5: ("32.0", "16.7", "21.2"),
    1.0: ("8.0", "4.68", "5.22"),
    2.0: ("2.0", "1.72", "1.23"),
    4.0: ("0.50", "1.08", "0.24"),
    8.0: ("0.125", "1.00", "0.025"),
}


@pytest.mark.parametrize("eps", sorted(FACTS_TABLE))
def test_worst_case_matches_facts_table(eps: float) -> None:
    for mech, printed in zip(("laplace", "duchi", "piecewise"), FACTS_TABLE[eps], strict=True):
        decimals = len(printed.split(".")[1])
        measured = worst_case_variance(mechanism=mech, epsilon=eps)
        assert round(measured, decimals) == pytest.approx(float(printed))


@pytest.mark.parametrize("mech", MECHANISMS)
@pytest.mark.parametrize("eps", EPS_GRID)
def test_worst_case_is_max_over_inputs(mech: str, eps: float) -> None:
    grid = max(variance(x, mechanism=mech, epsilon=eps) for x in np.linspace(-1, 1, 401))
    assert worst_case_variance(mechanism=mech, epsilon=eps) == pytest.approx(grid, rel=1e-12)


def test_hybrid_threshold_and_dominance() -> None:
    assert abs(HYBRID_EPS_STAR - 0.6094) < 1e-4
    # eps* is where HM's alpha = 1 - e^(-eps/2) mixture reaches Duchi's worst case (Wang et al. 2019, III-B).
    a = 1 - math.exp(-HYBRID_EPS_STAR / 2)
    mix = a * variance(0.0, mechanism="piecewise", epsilon=HYBRID_EPS_STAR) + (1 - a) * duchi_c(
        HYBRID_EPS_STAR
    ) ** 2
    assert mix == pytest.approx(duchi_c(HYBRID_EPS_STAR) ** 2, rel=1e-9)
    for eps in np.geomspace(0.01, 16, 300):
        wc = {m: worst_case_variance(mechanism=m, epsilon=eps) for m in MECHANISMS}
        assert wc["hybrid"] <= min(wc["duchi"], wc["piecewise"]) * (1 + 1e-12)
        if eps <= HYBRID_EPS_STAR:
            assert wc["hybrid"] == wc["duchi"]
        else:
            # The x^2 terms cancel: HM's variance does not depend on the input.
            v = [variance(x, mechanism="hybrid", epsilon=eps) for x in (-1.0, 0.0, 0.3, 1.0)]
            assert max(v) == pytest.approx(min(v), rel=1e-9)
    # FACTS.md: Duchi is best below eps ~ 1.29, Piecewise above.
    assert worst_case_variance(mechanism="duchi", epsilon=1.25) < worst_case_variance(
        mechanism="piecewise", epsilon=1.25
    )
    assert worst_case_variance(mechanism="duchi", epsilon=1.33) > worst_case_variance(
        mechanism="piecewise", epsilon=1.33
    )


# ----------------------------------------------------------------------------------------------------------
# The privacy guarantee, read off output_density


def pm_boundaries(eps: float, xs: np.ndarray) -> np.ndarray:
    c = pm_c(eps)
    left = (c + 1) / 2 * xs - (c - 1) / 2
    return np.concatenate([left, left + c - 1])


@pytest.mark.parametrize("mech", MECHANISMS)
@pytest.mark.parametrize("eps", EPS_GRID)
def test_density_ratio_at_most_e_eps(mech: str, eps: float) -> None:
    xs = np.linspace(-1, 1, 41)
    span = pm_c(eps) + 0.5 if mech != "laplace" else 1 + 40 / eps
    ys = np.concatenate(
        [
            np.linspace(-span, span, 4001),
            pm_boundaries(eps, xs),  # where the PM density jumps
            [duchi_c(eps), -duchi_c(eps), pm_c(eps), -pm_c(eps)],
        ]
    )
    dens = np.stack([output_density(ys, float(x), mechanism=mech, epsilon=eps) for x in xs])
    assert np.all(dens >= 0)
    hi, lo = dens.max(axis=0), dens.min(axis=0)
    support = hi > 0
    assert support.sum() >= 2
    # Same support for every input (else the ratio is infinite), and ratio <= e^eps everywhere on it.
    assert np.all(lo[support] > 0)
    ratio = hi[support] / lo[support]
    assert ratio.max() <= math.exp(eps) * (1 + 1e-9)
    if mech in ("laplace", "piecewise", "duchi"):
        assert ratio.max() == pytest.approx(math.exp(eps), rel=1e-6)  # these mechanisms are tight


def _numeric_mass(f, a: float, b: float, n: int = 2_000_000) -> float:
    h = (b - a) / n
    mids = a + h * (np.arange(n) + 0.5)
    return float(f(mids).sum() * h)


@pytest.mark.parametrize("eps", EPS_GRID)
@pytest.mark.parametrize("x", (-1.0, 0.2, 1.0))
def test_density_has_unit_mass(eps: float, x: float) -> None:
    w = 80 / eps
    lap = _numeric_mass(lambda y: output_density(y, x, mechanism="laplace", epsilon=eps), x - w, x + w)
    assert lap == pytest.approx(1.0, abs=1e-4)
    c = pm_c(eps)
    pm = _numeric_mass(lambda y: output_density(y, x, mechanism="piecewise", epsilon=eps), -c - 1, c + 1)
    assert pm == pytest.approx(1.0, abs=1e-4)
    cd = duchi_c(eps)
    du = output_density(np.array([cd, -cd, 0.0, cd * (1 + 1e-6)]), x, mechanism="duchi", epsilon=eps)
    assert du[0] + du[1] == pytest.approx(1.0, abs=1e-12) and du[2] == du[3] == 0.0
    hy_atoms = output_density(np.array([cd, -cd]), x, mechanism="hybrid", epsilon=eps).sum()
    hy_cont = _numeric_mass(lambda y: output_density(y, x, mechanism="hybrid", epsilon=eps), -c - 1, c + 1)
    assert hy_atoms + hy_cont == pytest.approx(1.0, abs=1e-4)


def _assert_histogram_matches(samples: np.ndarray, dens, a: float, b: float, n_total: int) -> None:
    edges = np.linspace(a, b, 41)
    counts, _ = np.histogram(samples, bins=edges)
    for lo_e, hi_e, obs in zip(edges[:-1], edges[1:], counts, strict=True):
        p = _numeric_mass(dens, lo_e, hi_e, n=400)
        sd = math.sqrt(n_total * p * (1 - p))
        assert abs(obs - n_total * p) <= 6 * sd + 2, (lo_e, hi_e, obs, n_total * p)


@pytest.mark.parametrize("mech", MECHANISMS)
@pytest.mark.parametrize("eps", (0.3, 1.0, 4.0, 8.0))
@pytest.mark.parametrize("x", (-0.8, 0.0, 1.0))
def test_samples_follow_the_exact_output_law(mech: str, eps: float, x: float) -> None:
    """Ties the sampler to output_pmf, so the ratio test below speaks about what privatize emits: every sample is
    one of the law's values (exactly), and the frequency of each value matches its probability."""
    n = 200_000
    values, probs = output_pmf(x, mechanism=mech, epsilon=eps)
    y = raw_samples(mech, eps, x, n, seed=11 + MECHANISMS.index(mech))
    idx = np.searchsorted(values, y)
    assert np.all(idx < len(values)) and np.array_equal(values[idx], y)  # bit-exact grid values only
    counts = np.bincount(idx, minlength=len(values))
    expected = n * probs
    big = expected >= 50
    z = (counts[big] - expected[big]) / np.sqrt(expected[big] * (1 - probs[big]))
    assert np.abs(z).max() <= 6
    assert counts[~big].sum() <= expected[~big].sum() + 6 * math.sqrt(expected[~big].sum()) + 2


@pytest.mark.parametrize("mech", MECHANISMS)
@pytest.mark.parametrize("eps", (EPSILON_FLOOR, 0.3, 1.0, 2.0, 4.0, 8.0, 16.0))
def test_floating_point_safe_law_is_eps_ldp_with_one_support(mech: str, eps: float) -> None:
    """Mironov 2012: the values a device can emit do not depend on its input, and every one of them has, for any
    two inputs, probabilities within e^eps of each other, and at least 2^-35 (the restated guarantee's premise)."""
    eps = min(eps, epsilon_ceiling(mech))
    laws = [output_pmf(float(x), mechanism=mech, epsilon=eps) for x in np.linspace(-1, 1, 41)]
    values = laws[0][0]
    assert all(np.array_equal(v, values) for v, _ in laws)
    probs = np.stack([p for _, p in laws])
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    assert probs.min() >= 2.0 ** -35
    assert (probs.max(axis=0) / probs.min(axis=0)).max() <= math.exp(eps) * (1 + 1e-9)
    means = probs @ values  # unbiased (Laplace: up to its clamp's 2^-20 of a scale)
    tol = 2 * 2.0 ** -20 * 2 / eps if mech == "laplace" else 1e-9
    assert np.abs(means - np.linspace(-1, 1, 41)).max() <= tol
    assert np.abs(values).max() <= output_bound(mechanism=mech, epsilon=eps) * (1 + 1e-12)


def test_secure_noise_is_fresh_every_time() -> None:
    spec = LDPSpec(mechanism="piecewise", epsilon=2.0, lo=40.0, hi=400.0)
    a = privatize(np.full(200, 120.0), spec=spec, rng=PrivacyRNG.secure())
    b = privatize(np.full(200, 120.0), spec=spec, rng=PrivacyRNG.secure())
    assert not np.array_equal(a, b)
    seeded = [privatize(np.full(200, 120.0), spec=spec, rng=PrivacyRNG.simulation(5)) for _ in range(2)]
    np.testing.assert_array_equal(*seeded)  # reproducible only in the named simulation mode


# ----------------------------------------------------------------------------------------------------------
# Output ranges


@pytest.mark.parametrize("eps", EPS_GRID)
def test_output_ranges(eps: float) -> None:
    n = 100_000
    cd, c = duchi_c(eps), pm_c(eps)
    y = raw_samples("duchi", eps, 0.3, n, seed=3)
    values = np.unique(y)
    assert len(values) == 2
    np.testing.assert_allclose(values, [-cd, cd], rtol=1e-12)
    assert output_bound(mechanism="duchi", epsilon=eps) == pytest.approx(cd, rel=1e-12)
    for x in (-1.0, 0.0, 1.0):
        y = raw_samples("piecewise", eps, x, n, seed=4)
        assert np.all(np.abs(y) <= c * (1 + 1e-12))
    y = raw_samples("piecewise", eps, 0.0, n, seed=5)
    assert y.min() < -c + 0.02 * c and y.max() > c - 0.02 * c  # the whole [-C, C] is used
    assert output_bound(mechanism="piecewise", epsilon=eps) == pytest.approx(c, rel=1e-12)
    y = raw_samples("hybrid", eps, 1.0, n, seed=6)
    bound = output_bound(mechanism="hybrid", epsilon=eps)
    assert np.all(np.abs(y) <= bound * (1 + 1e-12))
    assert bound == pytest.approx(c if eps > HYBRID_EPS_STAR else cd, rel=1e-12)
    lap = output_bound(mechanism="laplace", epsilon=eps)  # clamped: 2^-20 of the mass lies beyond
    assert lap == pytest.approx(1 + 2 / eps * 20 * math.log(2))
    assert np.all(np.abs(raw_samples("laplace", eps, 1.0, n, seed=7)) <= lap)


@pytest.mark.parametrize("mech", MECHANISMS)
def test_output_bound_matches_the_real_output_range(mech: str) -> None:
    """Issue 12: one bound (federation.ldp_range) for device and gateway, equal to what the mechanism emits,
    including Hybrid below eps* ~= 0.61 where the two copies used to disagree."""
    from federation.ldp_range import output_bound as gateway_bound

    for eps in (0.05, 0.3, 0.6, 0.62, 1.0, 4.0, 8.0):
        values, probs = output_pmf(1.0, mechanism=mech, epsilon=eps)
        emitted = np.abs(values[probs > 0]).max()
        assert gateway_bound(mechanism=mech, epsilon=eps) == output_bound(mechanism=mech, epsilon=eps)
        assert emitted == pytest.approx(output_bound(mechanism=mech, epsilon=eps), rel=1e-12)


def test_large_and_tiny_epsilon_stay_finite() -> None:
    for mech in MECHANISMS:
        for eps in (EPSILON_FLOOR, epsilon_ceiling(mech)):
            y = raw_samples(mech, eps, 0.5, 1000, seed=8)
            assert np.all(np.isfinite(y))
            assert math.isfinite(worst_case_variance(mechanism=mech, epsilon=eps))
            assert np.all(np.isfinite(output_density(np.array([0.0, 0.5]), 0.5, mechanism=mech, epsilon=eps)))


# ----------------------------------------------------------------------------------------------------------
# API shape and errors


def test_privatize_shapes_types_and_determinism() -> None:
    spec = LDPSpec(mechanism="piecewise", epsilon=1.0, lo=40.0, hi=400.0)
    scalar = privatize(120.0, spec=spec, rng=np.random.default_rng(0))
    assert isinstance(scalar, np.ndarray) and scalar.shape == () and scalar.dtype == np.float64
    grid = np.array([[40, 100, 200], [300, 400, 10]], dtype=np.int64)
    before = grid.copy()
    a = privatize(grid, spec=spec, rng=np.random.default_rng(42))
    b = privatize(grid, spec=spec, rng=np.random.default_rng(42))
    assert a.shape == grid.shape and a.dtype == np.float64
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(grid, before)
    assert privatize([100.0, 200.0], spec=spec, rng=np.random.default_rng(1)).shape == (2,)
    assert privatize(np.empty((0,)), spec=spec, rng=np.random.default_rng(1)).shape == (0,)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"epsilon": float("nan")}, "epsilon"),
        ({"epsilon": float("inf")}, "epsilon"),
        ({"epsilon": "1"}, "epsilon"),
        ({"epsilon": True}, "epsilon"),
        ({"epsilon": 101.0}, "epsilon"),
        ({"epsilon": 0.005}, "epsilon"),
        ({"epsilon": 9.0}, "epsilon"),  # Laplace's floating-point-safe ceiling is 8
        ({"mechanism": "gaussian"}, "mechanism"),
        ({"mechanism": None}, "mechanism"),
        ({"lo": 400.0, "hi": 40.0}, "lo"),
        ({"lo": 40.0, "hi": 40.0}, "lo"),
        ({"lo": float("nan")}, "lo"),
        ({"hi": float("inf")}, "hi"),
    ],
)
def test_spec_rejects_bad_fields(kwargs: dict, field: str) -> None:
    args = {"mechanism": "laplace", "epsilon": 1.0, "lo": 40.0, "hi": 400.0} | kwargs
    with pytest.raises(LDPError, match=f"^{field}"):
        LDPSpec(**args)


def test_spec_is_frozen_and_normalised() -> None:
    spec = LDPSpec(mechanism="duchi", epsilon=2, lo=40, hi=400)
    assert isinstance(spec.epsilon, float) and isinstance(spec.lo, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.epsilon = 100.0  # type: ignore[misc]
    assert issubclass(LDPError, ValueError)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), [100.0, float("nan")], ["abc"]])
def test_privatize_rejects_non_finite_values(bad: object) -> None:
    spec = LDPSpec(mechanism="hybrid", epsilon=1.0, lo=40.0, hi=400.0)
    with pytest.raises(LDPError, match="^values"):
        privatize(bad, spec=spec, rng=np.random.default_rng(0))  # type: ignore[arg-type]


def test_closed_forms_reject_bad_arguments() -> None:
    with pytest.raises(LDPError, match="^x"):
        variance(1.5, mechanism="duchi", epsilon=1.0)
    with pytest.raises(LDPError, match="^x"):
        output_density(np.zeros(3), float("nan"), mechanism="duchi", epsilon=1.0)
    with pytest.raises(LDPError, match="^mechanism"):
        worst_case_variance(mechanism="rappor", epsilon=1.0)
    with pytest.raises(LDPError, match="^epsilon"):
        worst_case_variance(mechanism="laplace", epsilon=0.0)
    with pytest.raises(LDPError, match="^epsilon"):
        output_density(np.zeros(3), 0.0, mechanism="piecewise", epsilon=float("nan"))
    with pytest.raises(TypeError):
        variance(0.0, "duchi", 1.0)  # type: ignore[misc]
