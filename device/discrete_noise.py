"""Exact integer noise for floating-point-safe releases: discrete Laplace and discrete Gaussian on the integers.

Naive floating-point Laplace or Gaussian noise leaks the input through the pattern of representable outputs
(Mironov, "On significance of the least significant bits for differential privacy", CCS 2012). These samplers
use integer arithmetic only, on uniform integers drawn exactly (rejection on 64-bit words of
``PrivacyRNG.token_bytes``: the OS CSPRNG, or the seeded simulation stream), so the law of every output is
exactly the one the privacy analysis assumes. Algorithms from C. Canonne, G. Kamath, T. Steinke, "The Discrete
Gaussian for Differential Privacy", NeurIPS 2020 (arXiv:2004.00010), vectorised with numpy:

* Algorithm 1, Bernoulli(exp(-gamma)) for rational gamma = num/den >= 0 (``bernoulli_exp``);
* Algorithm 2, discrete Laplace with scale t/s: P[Y = y] proportional to exp(-|y| s/t) (``discrete_laplace``);
* Algorithm 3, discrete Gaussian N_Z(0, sigma2): P[Y = y] proportional to exp(-y^2 / (2 sigma2)), for an integer
  sigma2 (``discrete_gaussian``).

Every loop rejects and redraws, so its running time is random, never its output law. Numpy only.
"""

from __future__ import annotations

import math

import numpy as np

from federation.privacy_rng import PrivacyRNG

_U64_MAX = np.uint64(2 ** 64 - 1)
_MAX_DEN = 2 ** 52  # den * K stays far below 2**63 for every K this sampler can reach (K < 2**10)
_MAX_K = 2 ** 10


def uniform_below(n: np.ndarray, rng: PrivacyRNG) -> np.ndarray:
    """Exactly uniform integers in [0, n) for each element of ``n`` (int64, 1 <= n < 2**62), by rejection."""
    n = np.asarray(n, dtype=np.int64)
    if n.size and (n.min() < 1 or n.max() >= 2 ** 62):
        raise ValueError("uniform_below: bounds must lie in [1, 2**62)")
    flat = n.ravel()
    nu = flat.astype(np.uint64)
    limit = (_U64_MAX // nu) * nu  # words below limit map uniformly onto [0, n)
    out = np.empty(flat.shape, dtype=np.int64)
    idx = np.arange(flat.size)
    while idx.size:
        words = np.frombuffer(rng.token_bytes(8 * idx.size), dtype=np.uint64)
        ok = words < limit[idx]
        out[idx[ok]] = (words[ok] % nu[idx[ok]]).astype(np.int64)
        idx = idx[~ok]
    return out.reshape(n.shape)


def _bernoulli_exp_le1(num: np.ndarray, den: np.ndarray, rng: PrivacyRNG) -> np.ndarray:
    """Bernoulli(exp(-num/den)) for 0 <= num <= den (CKS Algorithm 1, first branch): K = 1; while
    Bernoulli(num/(den K)) succeeds, K += 1; output whether K is odd."""
    k = np.ones(num.shape, dtype=np.int64)
    active = np.ones(num.shape, dtype=bool)
    while active.any():
        idx = np.flatnonzero(active)
        if k[idx].max() >= _MAX_K:  # probability below 1/1023!: never in practice, but never silently wrong
            raise RuntimeError("bernoulli_exp: K exceeded its bound")
        hit = uniform_below(den[idx] * k[idx], rng) < num[idx]
        k[idx[hit]] += 1
        active[idx[~hit]] = False
    return (k % 2) == 1


def bernoulli_exp(num: np.ndarray, den: np.ndarray, rng: PrivacyRNG) -> np.ndarray:
    """Bernoulli(exp(-num/den)) elementwise for integer num >= 0 and 1 <= den < 2**52 (CKS 2020, Algorithm 1).

    ``num`` may be an int64 array or an object array of Python ints (for values past int64).
    """
    den = np.asarray(den, dtype=np.int64)
    num_obj = np.asarray(num)
    if den.size and (den.min() < 1 or den.max() >= _MAX_DEN):
        raise ValueError("bernoulli_exp: den must lie in [1, 2**52)")
    flat_num = num_obj.ravel()
    flat_den = den.ravel()
    if flat_num.shape != flat_den.shape:
        raise ValueError("bernoulli_exp: num and den differ in shape")
    # Whole part w = floor(gamma) and remainder r = num - w den, exactly (Python ints for huge num).
    if flat_num.dtype == object:
        pairs = [divmod(int(a), int(b)) for a, b in zip(flat_num, flat_den, strict=True)]
        # exp(-2**62) is the survival probability cap; a larger whole part would change it by < exp(-2**62).
        whole = np.array([min(w, 2 ** 62) for w, _ in pairs], dtype=np.int64)
        rem = np.array([r for _, r in pairs], dtype=np.int64)
    else:
        flat_num = flat_num.astype(np.int64)
        if flat_num.size and flat_num.min() < 0:
            raise ValueError("bernoulli_exp: num must be >= 0")
        whole, rem = np.divmod(flat_num, flat_den)
    alive = np.ones(flat_den.shape, dtype=bool)
    left = whole.copy()
    ones = np.ones(flat_den.shape, dtype=np.int64)
    while True:  # gamma > 1: each whole unit must pass a Bernoulli(exp(-1))
        idx = np.flatnonzero(alive & (left > 0))
        if idx.size == 0:
            break
        alive[idx] = _bernoulli_exp_le1(ones[idx], ones[idx], rng)
        left[idx] -= 1
    out = np.zeros(flat_den.shape, dtype=bool)
    idx = np.flatnonzero(alive)
    if idx.size:
        out[idx] = _bernoulli_exp_le1(rem[idx], flat_den[idx], rng)
    return out.reshape(den.shape)


def discrete_laplace(*, scale_num: int, scale_den: int, size: int, rng: PrivacyRNG) -> np.ndarray:
    """``size`` draws with P[Y = y] proportional to exp(-|y| scale_den/scale_num) (CKS 2020, Algorithm 2).

    With L1 sensitivity D (integers), adding this noise is (D scale_den/scale_num)-DP (pure; the geometric
    mechanism, Ghosh, Roughgarden, Sundararajan, STOC 2009).
    """
    t, s = int(scale_num), int(scale_den)
    if not (1 <= t < 2 ** 40 and 1 <= s < 2 ** 40):
        raise ValueError(f"discrete_laplace: scale_num and scale_den must lie in [1, 2**40), got {t}/{s}")
    out = np.zeros(size, dtype=np.int64)
    pending = np.ones(size, dtype=bool)
    while pending.any():
        idx = np.flatnonzero(pending)
        m = idx.size
        tt = np.full(m, t, dtype=np.int64)
        u = uniform_below(tt, rng)
        keep = bernoulli_exp(u, tt, rng)
        v = np.zeros(m, dtype=np.int64)
        going = keep.copy()
        ones = np.ones(m, dtype=np.int64)
        while going.any():  # V ~ Geometric: count successes of Bernoulli(exp(-1)) before the first failure
            g = np.flatnonzero(going)
            a = bernoulli_exp(ones[g], ones[g], rng)
            v[g[a]] += 1
            going[g[~a]] = False
        y = (u + t * v) // s
        negative = uniform_below(np.full(m, 2, dtype=np.int64), rng) == 1
        ok = keep & ~(negative & (y == 0))
        out[idx[ok]] = np.where(negative[ok], -y[ok], y[ok])
        pending[idx[ok]] = False
    return out


def discrete_gaussian(*, sigma2: int, size: int, rng: PrivacyRNG) -> np.ndarray:
    """``size`` draws of N_Z(0, sigma2): P[Y = y] proportional to exp(-y^2/(2 sigma2)), sigma2 an integer >= 1
    and < 2**40 (CKS 2020, Algorithm 3: discrete Laplace proposals with t = floor(sigma) + 1, accepted with
    probability exp(-(|Y| - sigma2/t)^2 / (2 sigma2)))."""
    s2 = int(sigma2)
    if not 1 <= s2 < 2 ** 40:
        raise ValueError(f"discrete_gaussian: sigma2 must be an integer in [1, 2**40), got {sigma2!r}")
    t = math.isqrt(s2) + 1
    den_value = 2 * s2 * t * t
    if den_value >= _MAX_DEN:
        raise ValueError("discrete_gaussian: sigma2 too large for exact int64 arithmetic")
    out = np.zeros(size, dtype=np.int64)
    pending = np.ones(size, dtype=bool)
    while pending.any():
        idx = np.flatnonzero(pending)
        y = discrete_laplace(scale_num=t, scale_den=1, size=idx.size, rng=rng)
        a = np.abs(y) * t - s2  # gamma = (|y| - s2/t)^2 / (2 s2) = a^2 / (2 s2 t^2)
        big = np.abs(a) >= 2 ** 31
        num = np.array([int(x) * int(x) for x in a], dtype=object) if big.any() else a * a
        accept = bernoulli_exp(num, np.full(idx.size, den_value, dtype=np.int64), rng)
        out[idx[accept]] = y[accept]
        pending[idx[accept]] = False
    return out
