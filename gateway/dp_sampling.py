"""Poisson sampling for DP-SGD at O(batch) cost per step: each record joins each batch independently with rate q.

DP-SGD's privacy analysis (the Sampled Gaussian Mechanism: Mironov, Talwar and Zhang 2019, "Renyi Differential
Privacy of the Sampled Gaussian Mechanism", Sec. 3; Opacus' `UniformWithReplacementSampler`) assumes every one of
the N records is included in a batch independently with probability q. Opacus draws that as an N-long Bernoulli
mask per step: O(N) per step, O(N^2 / B) per epoch. This module draws the same distribution in O(B): the batch size
K ~ Binomial(N, q), then K distinct indices uniformly at random. Under independent inclusion a set S has probability
q^|S| (1 - q)^(N - |S|), which depends on S only through |S|; so given |S| = K every K-subset is equally likely,
and |S| is Binomial(N, q). numpy's `Generator.choice(N, K, replace=False)` draws a uniform K-subset with Floyd's
algorithm (Bentley and Floyd 1987, "A sample of brilliance", CACM 30(9)) in O(K) when K is small against N.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class PoissonSampler:
    """Exactly `steps` batches of record indices (int64, possibly empty), each a Poisson sample at `sample_rate`.

    Iterating again continues the random stream (fresh batches), as a sampler over several epochs should.
    """

    def __init__(self, n_samples: int, *, sample_rate: float, steps: int, seed: int) -> None:
        if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
        if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        self.n_samples = int(n_samples)
        self.sample_rate = float(sample_rate)
        self.steps = int(steps)
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[np.ndarray]:
        for _ in range(self.steps):
            yield self.draw()

    def draw(self) -> np.ndarray:
        """One batch: Binomial(N, q) many distinct indices, uniformly at random (in random order)."""
        k = int(self._rng.binomial(self.n_samples, self.sample_rate))
        return self._rng.choice(self.n_samples, size=k, replace=False)
