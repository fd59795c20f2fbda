"""Poisson sampler: inclusion rate q per record, Binomial batch sizes, independent records, exact step count.

The tolerances come from the variances of the quantities under exact Poisson sampling (fixed seeds, so the tests
are deterministic); each bound sits at 5 standard deviations, with a Bonferroni margin where many are checked.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from federation.privacy_rng import PrivacyRNG
from gateway.dp_sampling import PoissonSampler, distinct_uniform
from tests.gateway.inputs import sim

N, Q, DRAWS = 40, 0.1, 20_000


@pytest.fixture(scope="module", params=["simulation", "secure"])
def inclusion(request: pytest.FixtureRequest) -> np.ndarray:
    """DRAWS x N boolean matrix: record j in batch t (from the seeded simulation stream and from the OS CSPRNG)."""
    rng = PrivacyRNG.simulation(11) if request.param == "simulation" else PrivacyRNG.secure()
    sampler = PoissonSampler(N, sample_rate=Q, steps=DRAWS, rng=rng)
    out = np.zeros((DRAWS, N), dtype=bool)
    for t, idx in enumerate(sampler):
        assert len(np.unique(idx)) == len(idx), "a record drawn twice into one batch"
        assert idx.dtype == np.int64 and (len(idx) == 0 or (idx.min() >= 0 and idx.max() < N))
        out[t, idx] = True
    return out


def test_each_record_is_included_at_rate_q(inclusion: np.ndarray) -> None:
    counts = inclusion.sum(axis=0)
    sd = math.sqrt(DRAWS * Q * (1 - Q))  # each count ~ Binomial(DRAWS, q)
    assert np.all(np.abs(counts - DRAWS * Q) < 5 * sd), counts


def test_batch_sizes_are_binomial_n_q(inclusion: np.ndarray) -> None:
    sizes = inclusion.sum(axis=1)
    mean, var = N * Q, N * Q * (1 - Q)
    assert abs(sizes.mean() - mean) < 5 * math.sqrt(var / DRAWS)
    # sample variance: sd about var * sqrt(2 / DRAWS) (near-normal sizes); a Poisson(Nq) size would be 11% off
    assert abs(sizes.var(ddof=1) - var) < 5 * var * math.sqrt(2 / DRAWS)
    # goodness of fit to the Binomial pmf, tails pooled so every expected cell is >= 20
    k = np.arange(N + 1)
    expected = stats.binom.pmf(k, N, Q) * DRAWS
    observed = np.bincount(sizes, minlength=N + 1).astype(float)
    lo, hi = int(np.argmax(expected >= 20)), int(len(k) - np.argmax(expected[::-1] >= 20) - 1)
    exp_cells = np.r_[expected[: lo + 1].sum(), expected[lo + 1 : hi], expected[hi:].sum()]
    obs_cells = np.r_[observed[: lo + 1].sum(), observed[lo + 1 : hi], observed[hi:].sum()]
    assert stats.chisquare(obs_cells, exp_cells * obs_cells.sum() / exp_cells.sum()).pvalue > 1e-4


def test_records_are_included_independently_of_each_other(inclusion: np.ndarray) -> None:
    """Pairs co-occur at rate q^2: a fixed-size, shuffled-epoch or block sampler has the right marginals, not this."""
    m = inclusion.astype(np.int64)
    together = (m.T @ m)[np.triu_indices(N, k=1)]
    sd = math.sqrt(DRAWS * Q**2 * (1 - Q**2))
    assert np.all(np.abs(together - DRAWS * Q**2) < 5.5 * sd), (together.min(), together.max())


def test_exactly_the_planned_steps_including_empty_batches() -> None:
    sampler = PoissonSampler(10, sample_rate=0.05, steps=500, rng=sim(3))
    batches = list(sampler)
    assert len(batches) == len(sampler) == 500
    empty = sum(len(b) == 0 for b in batches)
    p_empty, sd = 0.95**10, math.sqrt(500 * 0.95**10 * (1 - 0.95**10))
    assert abs(empty - 500 * p_empty) < 5 * sd
    assert all(b.dtype == np.int64 for b in batches)


def test_rate_one_takes_every_record_every_step() -> None:
    for idx in PoissonSampler(7, sample_rate=1.0, steps=5, rng=sim()):
        assert sorted(idx.tolist()) == list(range(7))


def test_dense_rates_take_the_bernoulli_path_with_the_same_law() -> None:
    sizes = np.array([len(b) for b in PoissonSampler(50, sample_rate=0.8, steps=4000, rng=PrivacyRNG.secure())])
    assert abs(sizes.mean() - 40) < 5 * math.sqrt(50 * 0.8 * 0.2 / 4000)
    assert abs(sizes.var(ddof=1) - 8.0) < 5 * 8.0 * math.sqrt(2 / 4000)


def test_distinct_uniform_draws_every_subset_position_equally() -> None:
    rng = PrivacyRNG.secure()
    counts = np.zeros((3, 10))
    for _ in range(6000):
        d = distinct_uniform(rng, 10, 3)
        assert len(set(d.tolist())) == 3
        counts[np.arange(3), d] += 1
    assert np.all(np.abs(counts - 600) < 5 * math.sqrt(6000 * 0.1 * 0.9)), counts
    assert sorted(distinct_uniform(rng, 10, 10).tolist()) == list(range(10))
    with pytest.raises(ValueError):
        distinct_uniform(rng, 3, 4)


def test_a_seed_is_not_a_privacy_rng() -> None:
    with pytest.raises(TypeError, match="PrivacyRNG"):
        PoissonSampler(10, sample_rate=0.1, steps=1, rng=5)  # type: ignore[arg-type]


def test_deterministic_by_seed_fresh_across_epochs_and_seeds() -> None:
    def run(seed: int) -> list[list[int]]:
        return [b.tolist() for b in PoissonSampler(100, sample_rate=0.2, steps=20, rng=sim(seed))]

    assert run(5) == run(5)
    assert run(5) != run(6)
    again = PoissonSampler(100, sample_rate=0.2, steps=20, rng=sim(5))
    first, second = [b.tolist() for b in again], [b.tolist() for b in again]
    assert first == run(5) and second != first


def test_scales_to_large_datasets_without_touching_every_record() -> None:
    """O(batch) per step: a million records at q = 64 / 1e6 draws batches of about 64."""
    sampler = PoissonSampler(1_000_000, sample_rate=64 / 1_000_000, steps=200, rng=sim(1))
    sizes = np.array([len(b) for b in sampler])
    assert abs(sizes.mean() - 64) < 5 * math.sqrt(64 / 200)
    assert max(max(b) for b in PoissonSampler(1_000_000, sample_rate=0.5, steps=1, rng=sim(2))) < 1_000_000


@pytest.mark.parametrize(("n", "q", "steps"), [
    (0, 0.1, 1), (-3, 0.1, 1), (2.5, 0.1, 1), (True, 0.1, 1),
    (10, 0.0, 1), (10, -0.1, 1), (10, 1.5, 1), (10, float("nan"), 1),
    (10, 0.1, -1), (10, 0.1, 1.0), (10, 0.1, None),
])
def test_bad_parameters_are_refused(n: object, q: float, steps: object) -> None:
    with pytest.raises(ValueError):
        PoissonSampler(n, sample_rate=q, steps=steps, rng=sim())  # type: ignore[arg-type]
