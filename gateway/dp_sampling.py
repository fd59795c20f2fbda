"""Poisson sampling for DP-SGD at O(batch) cost per step: each record joins each batch independently with rate q.

DP-SGD's privacy analysis (the Sampled Gaussian Mechanism: Mironov, Talwar and Zhang 2019, "Renyi Differential
Privacy of the Sampled Gaussian Mechanism", Sec. 3; Opacus' `UniformWithReplacementSampler`) assumes every one of
the N records is included in a batch independently with probability q. Opacus draws that as an N-long Bernoulli
mask per step: O(N) per step, O(N^2 / B) per epoch. This module draws the same distribution in O(B): the batch size
K ~ Binomial(N, q), then K distinct indices uniformly at random. Under independent inclusion a set S has probability
q^|S| (1 - q)^(N - |S|), which depends on S only through |S|; so given |S| = K every K-subset is equally likely,
and |S| is Binomial(N, q).

Randomness comes from a `federation.privacy_rng.PrivacyRNG` (the OS CSPRNG; a seed only in simulation mode): K by
inversion of the Binomial CDF at one uniform (tabulated once per sampler), then the first K distinct values of a
stream of uniform integers in [0, N) (by exchangeability, a uniform K-subset in a uniform order), drawn in blocks so the
expected cost stays O(K) while K <= N / 2; above that, one Bernoulli(q) draw per record (O(N), exact as well).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from federation.privacy_rng import PrivacyRNG


class PoissonSampler:
    """Exactly `steps` batches of record indices (int64, possibly empty), each a Poisson sample at `sample_rate`.

    Iterating again continues the random stream (fresh batches), as a sampler over several epochs should.
    """

    def __init__(self, n_samples: int, *, sample_rate: float, steps: int, rng: PrivacyRNG) -> None:
        if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
        if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        self.n_samples = int(n_samples)
        self.sample_rate = float(sample_rate)
        self.steps = int(steps)
        if not isinstance(rng, PrivacyRNG):
            raise TypeError(f"rng must be a federation.privacy_rng.PrivacyRNG, got {type(rng).__name__}")
        self._rng = rng
        self._support: np.ndarray | None = None
        self._cdf: np.ndarray | None = None

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[np.ndarray]:
        for _ in range(self.steps):
            yield self.draw()

    def draw(self) -> np.ndarray:
        """One batch: Binomial(N, q) many distinct indices, uniformly at random (in random order)."""
        n, q = self.n_samples, self.sample_rate
        if q == 1.0:
            return self._rng_permutation(n)
        if q > 0.5:
            picked = np.flatnonzero(self._rng.bernoulli(q, n))
            return picked[self._rng_permutation(len(picked))]
        if self._cdf is None:
            self._support, self._cdf = _binomial_cdf(n, q)
        u = float(self._rng.open_uniform(1)[0])
        k = int(self._support[min(int(np.searchsorted(self._cdf, u)), len(self._cdf) - 1)])
        return distinct_uniform(self._rng, n, k)

    def _rng_permutation(self, n: int) -> np.ndarray:
        return distinct_uniform(self._rng, n, n)


BINOMIAL_TAIL_SD = 12.0  # the batch-size CDF is tabulated over mean +- 12 sd: the mass outside is below 1e-30


def _binomial_cdf(n: int, q: float) -> tuple[np.ndarray, np.ndarray]:
    """(k values, P(K <= k)) of Binomial(n, q) over mean +- BINOMIAL_TAIL_SD sd, for inversion: the pmf in log
    space (log C(n, k) by lgamma), cumulated and normalised over that support."""
    mean, sd = n * q, math.sqrt(n * q * (1 - q))
    lo, hi = max(0, int(mean - BINOMIAL_TAIL_SD * sd) - 1), min(n, int(mean + BINOMIAL_TAIL_SD * sd) + 2)
    support = np.arange(lo, hi + 1)
    logc = np.array([math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) for k in support])
    logp = logc + support * math.log(q) + (n - support) * math.log1p(-q)
    pmf = np.exp(logp - logp.max())
    cdf = np.cumsum(pmf)
    return support, cdf / cdf[-1]


def distinct_uniform(rng: PrivacyRNG, n: int, k: int) -> np.ndarray:
    """k distinct integers of [0, n), uniformly at random and in random order (k <= n)."""
    if not 0 <= k <= n:
        raise ValueError(f"cannot draw {k} distinct values of [0, {n})")
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if 2 * k > n:  # dense: a random permutation by sorting uniform keys, then its first k
        return np.argsort(rng.uniform(n), kind="stable")[:k].astype(np.int64)
    have = np.empty(0, dtype=np.int64)
    while len(have) < k:
        stream = np.concatenate([have, rng.integers(n, 2 * (k - len(have)) + 8)])
        _, first = np.unique(stream, return_index=True)
        have = stream[np.sort(first)]  # first occurrences, in stream order
    return have[:k]
