"""The privacy randomness source: OS entropy by default, seeds only in the named simulation mode."""

import numpy as np
import pytest

from federation.privacy_rng import SIMULATION_LABEL, PrivacyRNG


def test_secure_draws_differ_between_instances_and_calls() -> None:
    a, b = PrivacyRNG.secure(), PrivacyRNG.secure()
    assert a.is_secure and a.label is None
    assert not np.array_equal(a.uniform(64), b.uniform(64))
    assert a.token_bytes(32) != a.token_bytes(32)


def test_simulation_is_reproducible_and_labelled() -> None:
    a, b = PrivacyRNG.simulation(7), PrivacyRNG.simulation(7)
    assert a.label == SIMULATION_LABEL
    assert np.array_equal(a.laplace(scale=2.0, size=16), b.laplace(scale=2.0, size=16))
    assert np.array_equal(a.spawn(3).uniform(8), b.spawn(3).uniform(8))
    sim = PrivacyRNG.simulation
    assert not np.array_equal(sim(7).spawn(3).uniform(8), sim(7).spawn(4).uniform(8))


def test_modes_cannot_be_mixed() -> None:
    with pytest.raises(ValueError):
        PrivacyRNG(mode="secure", generator=np.random.default_rng(0))
    with pytest.raises(ValueError):
        PrivacyRNG(mode="simulation")
    with pytest.raises(ValueError):
        PrivacyRNG(mode="fast")


@pytest.mark.parametrize("rng", [PrivacyRNG.secure(), PrivacyRNG.simulation(1)], ids=["secure", "simulation"])
def test_distributions(rng: PrivacyRNG) -> None:
    n = 200_000
    u = rng.uniform(n)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.005
    z = rng.standard_normal(n)
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1) < 0.02
    lap = rng.laplace(scale=3.0, size=n)
    assert abs(lap.mean()) < 0.05 and abs(lap.var() / (2 * 9.0) - 1) < 0.03  # Var Laplace(b) = 2 b^2
    assert np.isfinite(lap).all()
    assert abs(rng.bernoulli(0.2, n).mean() - 0.2) < 0.005
    k = rng.integers(10, n)
    assert k.min() == 0 and k.max() == 9 and abs(np.bincount(k).min() / n - 0.1) < 0.005
    assert rng.standard_normal((3, 5)).shape == (3, 5) and rng.standard_normal(7).shape == (7,)
