"""Local differential privacy (pure epsilon-LDP) for one bounded scalar reading, e.g. glucose in mg/dL.

A reading is clipped to [lo, hi], mapped affinely to t in [-1, 1], perturbed by one of four mechanisms and
mapped back, so every output is an *unbiased* estimate of the clipped reading (it may leave [lo, hi]).
Each call of a mechanism on one reading is epsilon-LDP; what a device composes per patient-day (or, as a
labelled option, per reading) is the odometer's business (``device.odometer``).

Mechanisms on t in [-1, 1] (sources, with the closed forms implemented below):

* ``laplace`` -- Dwork et al. 2006; on [-1, 1] the sensitivity is 2, so ``t + Lap(2/eps)``; variance 8/eps^2.
* ``duchi`` -- Duchi, Jordan, Wainwright, "Minimax optimal procedures for locally private estimation",
  JASA 2018, one-dimensional case, as restated in Wang et al. 2019 (below), Sec. II (existing solutions):
  output ``+C_D`` with probability ``1/2 + t (e^eps - 1) / (2 e^eps + 2)``, else ``-C_D``, where
  ``C_D = (e^eps + 1)/(e^eps - 1) = coth(eps/2)``; variance ``C_D^2 - t^2``.
* ``piecewise`` -- N. Wang, X. Xiao, Y. Yang, J. Zhao, S. C. Hui, H. Shin, J. Shin, G. Yu, "Collecting and
  Analyzing Multidimensional Data with Local Differential Privacy", ICDE 2019 (arXiv:1907.00782),
  Sec. III-A, the Piecewise Mechanism (PM): with ``C = (e^(eps/2) + 1)/(e^(eps/2) - 1) = coth(eps/4)``,
  ``l(t) = (C + 1)/2 t - (C - 1)/2`` and ``r(t) = l(t) + C - 1``, output uniform on [l(t), r(t)] with
  probability ``e^(eps/2)/(e^(eps/2) + 1)``, else uniform on [-C, l(t)) U (r(t), C]. The density is
  ``p = (e^eps - e^(eps/2)) / (2 e^(eps/2) + 2)`` on the centre piece and ``p / e^eps`` outside it (ratio
  exactly e^eps). Variance: ``t^2/(e^(eps/2) - 1) + (e^(eps/2) + 3)/(3 (e^(eps/2) - 1)^2)``.
* ``hybrid`` -- same paper, Sec. III-B, the Hybrid Mechanism (HM): with probability alpha run PM,
  otherwise Duchi, where ``alpha = 1 - e^(-eps/2)`` if ``eps > eps*`` and ``alpha = 0`` otherwise;
  ``eps* = ln((-5 + 2 cbrt(6353 - 405 sqrt(241)) + 2 cbrt(6353 + 405 sqrt(241))) / 27) ~= 0.61`` is where
  HM's worst case meets Duchi's. Both parts are unbiased, so the variance is the alpha-mixture of theirs; for
  ``eps > eps*`` the t^2 terms cancel and it is the constant
  ``(e^(eps/2) + 3)/(3 e^(eps/2) (e^(eps/2) - 1)) + (e^eps + 1)^2/(e^(eps/2) (e^eps - 1)^2)``.

**Floating-point safety** (Mironov, "On significance of the least significant bits for differential privacy",
CCS 2012: a textbook floating-point Laplace leaks its input through the low bits of its output, because the set
of doubles ``t + noise`` can reach depends on t). What a device emits here never depends on t through its
representation: Duchi emits one of two fixed doubles +-C_D; Piecewise (and the PM half of Hybrid) and Laplace
(clamped to +-B first, B = 1 + (2/eps) ln 2^20) are **randomised-rounded** to a fixed grid ``k * bound / M``,
|k| <= M (``federation.ldp_range``: M and the bound depend only on mechanism and epsilon): y goes to the grid
point above with probability ``frac(y / step)``, else to the one below, so ``E[output] = y`` and the result stays
unbiased (the clamp's bias is below 2^-20 scales). We use randomised instead of Mironov's nearest rounding
(snapping), because nearest rounding to a grid as coarse as his proof needs (a power of two >= the noise
scale) shrinks the estimate towards 0 by up to ~6-18% at small epsilon (the k = 1 Fourier term of the rounding
error, 2 / (1 + (2 pi lambda / Lambda)^2)); unbiasedness is what the gateway's estimates rest on.

*Guarantee, restated.* Clamping and randomised rounding are post-processing of the ideal (real-valued) mechanism's
output, so the ideal grid law satisfies ``P[k | t] <= e^eps P[k | t']`` on a support (the whole grid, plus +-C_D for
Hybrid) that is the same for every t. The implementation draws from 53-bit uniforms (``federation.privacy_rng``),
which approximates each grid point's probability to within a few units of 2^-52 (each uniform is a multiple of
2^-53; the ulp errors of the arithmetic move the rounding weights by about 2^-52 M, relatively); within the policy
range, epsilon in [0.01, 16] (Laplace [0.01, 8]: `federation.ldp_range`), every grid point has probability at least
2^-35 (computed exactly by `output_pmf`; tests check it). So each probability is within a factor ``1 +- 2^-16`` of
the ideal one, and each released value is ``(eps + 2^-15)``-LDP: the odometer charges the declared epsilon, and the
slack (below 3.1e-5 per release, 0.009 over the 288 releases of a day) is stated here rather than charged. Duchi's
one Bernoulli draw differs from its ideal probability by at most 2^-53.

Randomness comes from a ``federation.privacy_rng.PrivacyRNG``: the OS CSPRNG (``PrivacyRNG.secure()``) on devices;
a seeded generator only in the named simulation mode (a numpy Generator passed here is taken as that).
All numeric parameters are keyword-only. Only numpy is used: this runs on a Pi Zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from device.errors import DeviceError
from federation.ldp_range import (
    EPSILON_CEILING,
    EPSILON_FLOOR,
    HYBRID_EPS_STAR,
    LAPLACE_EPSILON_CEILING,
    MECHANISMS,
    duchi_bound,
    epsilon_ceiling,
    grid_points,
    hybrid_alpha,
    laplace_scale,
    pm_bound,
    pm_width,
)
from federation.ldp_range import output_bound as _range_bound
from federation.privacy_rng import SIMULATION, PrivacyRNG

__all__ = ["EPSILON_CEILING", "EPSILON_FLOOR", "HYBRID_EPS_STAR", "LAPLACE_EPSILON_CEILING", "MECHANISMS", "LDPError",
           "LDPSpec", "as_privacy_rng",
           "grid_step", "output_bound", "output_density", "output_pmf", "privatize", "variance",
           "worst_case_variance"]
MAX_EPSILON: float = EPSILON_CEILING  # the floating-point guarantee holds up to here (see the module docstring)

# Outputs this close (relatively) to a Duchi atom count as that atom in ``output_density``.
_ATOM_RTOL = 1e-12


class LDPError(DeviceError, ValueError):
    """A bad LDP parameter or input; the message starts with the offending field's name."""


def _check_mechanism(mechanism: object) -> str:
    if not isinstance(mechanism, str) or mechanism not in MECHANISMS:
        raise LDPError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")
    return mechanism


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise LDPError(f"{name} must be a real number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise LDPError(f"{name} must be finite, got {out!r}")
    return out


def _check_epsilon(epsilon: object) -> float:
    eps = _check_real("epsilon", epsilon)
    if not EPSILON_FLOOR <= eps <= EPSILON_CEILING:
        raise LDPError(f"epsilon must be in [{EPSILON_FLOOR:g}, {EPSILON_CEILING:g}], got {eps!r}")
    return eps


@dataclass(frozen=True)
class LDPSpec:
    """One device's LDP configuration: mechanism, epsilon per reading and the clip range [lo, hi]."""

    mechanism: str
    epsilon: float
    lo: float
    hi: float

    def __post_init__(self) -> None:
        _check_mechanism(self.mechanism)
        object.__setattr__(self, "epsilon", _check_epsilon(self.epsilon))
        if self.epsilon > epsilon_ceiling(self.mechanism):
            raise LDPError(f"epsilon {self.epsilon:g} exceeds {epsilon_ceiling(self.mechanism):g} for "
                           f"{self.mechanism} (the floating-point-safe form holds up to there)")
        lo = _check_real("lo", self.lo)
        hi = _check_real("hi", self.hi)
        if not lo < hi:
            raise LDPError(f"lo must be < hi, got lo={lo!r}, hi={hi!r}")
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)


# ---------------------------------------------------------------------------------------------------------
# Parameters of each mechanism on [-1, 1] (federation.ldp_range: one definition for device and gateway).

_duchi_bound, _pm_width, _pm_bound, _hybrid_alpha = duchi_bound, pm_width, pm_bound, hybrid_alpha


def _pm_centre_prob(eps: float) -> float:
    """e^(eps/2)/(e^(eps/2) + 1): probability of the centre piece [l(t), r(t)]."""
    return 1.0 / (1.0 + math.exp(-eps / 2))


def output_bound(*, mechanism: str, epsilon: float) -> float:
    """Largest |output| on the [-1, 1] scale; a receiver refuses anything beyond it (`federation.ldp_range`)."""
    return _range_bound(mechanism=_check_mechanism(mechanism), epsilon=_check_epsilon(epsilon))


def grid_step(*, mechanism: str, epsilon: float) -> float:
    """The spacing of the grid that Laplace and Piecewise outputs (and Hybrid's PM half) are rounded onto."""
    mech, eps = _check_mechanism(mechanism), _check_epsilon(epsilon)
    if mech == "duchi" or (mech == "hybrid" and _hybrid_alpha(eps) == 0.0):
        return 0.0
    pm_or_lap = "laplace" if mech == "laplace" else "piecewise"
    return _range_bound(mechanism=pm_or_lap, epsilon=eps) / grid_points(mechanism=mech, epsilon=eps)


def as_privacy_rng(rng: PrivacyRNG | np.random.Generator) -> PrivacyRNG:
    """A PrivacyRNG as is; a seeded numpy Generator as the named simulation mode (studies and tests)."""
    if isinstance(rng, PrivacyRNG):
        return rng
    if isinstance(rng, np.random.Generator):
        return PrivacyRNG(mode=SIMULATION, generator=rng)
    raise TypeError(f"rng must be a PrivacyRNG (or a seeded numpy Generator: simulation), got {type(rng).__name__}")


# ---------------------------------------------------------------------------------------------------------
# Samplers on [-1, 1]; t is a float64 array already clipped to [-1, 1].


def _round_to_grid(y: np.ndarray, *, bound: float, m: int, rng: PrivacyRNG) -> np.ndarray:
    """Randomised rounding of y in [-bound, bound] onto k * bound / m, |k| <= m: E[result] = y."""
    step = bound / m
    z = y / step
    k = np.floor(z)
    up = rng.uniform(z.shape) < (z - k)
    return np.clip(k + up, -m, m) * step


def _ideal_laplace(t: np.ndarray, eps: float, rng: PrivacyRNG) -> np.ndarray:
    b = _range_bound(mechanism="laplace", epsilon=eps)
    return np.clip(t + rng.laplace(scale=laplace_scale(eps), size=t.shape), -b, b)


def _sample_laplace(t: np.ndarray, eps: float, rng: PrivacyRNG) -> np.ndarray:
    b = _range_bound(mechanism="laplace", epsilon=eps)
    return _round_to_grid(_ideal_laplace(t, eps, rng), bound=b, m=grid_points(mechanism="laplace", epsilon=eps),
                          rng=rng)


def _sample_duchi(t: np.ndarray, eps: float, rng: PrivacyRNG) -> np.ndarray:
    c = _duchi_bound(eps)
    # 1/2 + t (e^eps - 1)/(2 e^eps + 2) == 1/2 + t / (2 C_D)
    plus = rng.uniform(t.shape) < 0.5 + 0.5 * t / c
    return np.where(plus, c, -c)


def _ideal_piecewise(t: np.ndarray, eps: float, rng: PrivacyRNG) -> np.ndarray:
    width = _pm_width(eps)
    c = 1.0 + width
    left = (c + 1) / 2 * t - width / 2
    right = left + width
    centre = rng.uniform(t.shape) < _pm_centre_prob(eps)
    u = rng.uniform(t.shape)
    inner = left + u * width
    # The outer pieces [-C, l) and (r, C] have total length C + 1; walk along them.
    w = u * (c + 1)
    left_len = left + c
    outer = np.where(w < left_len, w - c, right + (w - left_len))
    return np.clip(np.where(centre, inner, outer), -c, c)


def _sample_piecewise(t: np.ndarray, eps: float, rng: PrivacyRNG, *, mechanism: str = "piecewise") -> np.ndarray:
    return _round_to_grid(_ideal_piecewise(t, eps, rng), bound=_pm_bound(eps),
                          m=grid_points(mechanism=mechanism, epsilon=eps), rng=rng)


def _sample_hybrid(t: np.ndarray, eps: float, rng: PrivacyRNG) -> np.ndarray:
    alpha = _hybrid_alpha(eps)
    if alpha == 0.0:
        return _sample_duchi(t, eps, rng)
    use_pm = rng.uniform(t.shape) < alpha
    return np.where(use_pm, _sample_piecewise(t, eps, rng, mechanism="hybrid"), _sample_duchi(t, eps, rng))


_SAMPLERS = {
    "laplace": _sample_laplace,
    "duchi": _sample_duchi,
    "piecewise": _sample_piecewise,
    "hybrid": _sample_hybrid,
}


def privatize(values: np.ndarray | float, *, spec: LDPSpec, rng: PrivacyRNG | np.random.Generator) -> np.ndarray:
    """Clip ``values`` to [spec.lo, spec.hi] and return unbiased epsilon-LDP estimates in the same unit.

    Each element is privatised independently (epsilon per element), in the floating-point-safe form of the
    module docstring. The result is a new float64 array of the input's shape (0-d for a scalar); it may fall
    outside [lo, hi]. Non-finite inputs raise LDPError. `rng`: `PrivacyRNG.secure()` on devices; a seeded
    numpy Generator is taken as the named simulation mode.
    """
    if not isinstance(spec, LDPSpec):
        raise TypeError(f"spec must be an LDPSpec, got {type(spec).__name__}")
    prng = as_privacy_rng(rng)
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise LDPError(f"values must be numeric: {exc}") from None
    if not np.all(np.isfinite(x)):
        raise LDPError("values must be finite (found NaN or inf)")
    half = (spec.hi - spec.lo) / 2
    mid = spec.lo + half
    t = np.clip((np.clip(x, spec.lo, spec.hi) - mid) / half, -1.0, 1.0)
    y = _SAMPLERS[spec.mechanism](t, spec.epsilon, prng)
    return np.asarray(mid + half * y, dtype=np.float64)


# ---------------------------------------------------------------------------------------------------------
# Closed forms on [-1, 1].


def _check_x(x: object) -> float:
    xv = _check_real("x", x)
    if not -1.0 <= xv <= 1.0:
        raise LDPError(f"x must lie in [-1, 1], got {xv!r}")
    return xv


def _var_duchi(x: float, eps: float) -> float:
    return _duchi_bound(eps) ** 2 - x * x


def _var_piecewise(x: float, eps: float) -> float:
    em1 = math.expm1(eps / 2)
    return x * x / em1 + (em1 + 4) / (3 * em1 * em1)


def variance(x: float, *, mechanism: str, epsilon: float) -> float:
    """Closed-form variance of the ideal mechanism's output for input x in [-1, 1] (module docstring).

    What `privatize` emits adds the randomised rounding's variance, at most ``grid_step**2 / 4`` (under 1% of
    the Laplace variance and of PM's at every epsilon in the policy range; Duchi is not rounded).
    """
    mech, eps, xv = _check_mechanism(mechanism), _check_epsilon(epsilon), _check_x(x)
    if mech == "laplace":
        return 8.0 / (eps * eps)
    if mech == "duchi":
        return _var_duchi(xv, eps)
    if mech == "piecewise":
        return _var_piecewise(xv, eps)
    alpha = _hybrid_alpha(eps)
    # Mixture of two unbiased mechanisms: Var = alpha Var_PM + (1 - alpha) Var_Duchi.
    return alpha * _var_piecewise(xv, eps) + (1 - alpha) * _var_duchi(xv, eps)


def worst_case_variance(*, mechanism: str, epsilon: float) -> float:
    """max over x in [-1, 1] of ``variance``; every variance here is affine in x^2, so x = 0 or |x| = 1."""
    return max(
        variance(0.0, mechanism=mechanism, epsilon=epsilon),
        variance(1.0, mechanism=mechanism, epsilon=epsilon),
    )


def _pm_density(y: np.ndarray, x: float, eps: float) -> np.ndarray:
    width = _pm_width(eps)
    c = 1.0 + width
    left = (c + 1) / 2 * x - width / 2
    right = left + width
    high = _pm_centre_prob(eps) / width  # == (e^eps - e^(eps/2)) / (2 e^(eps/2) + 2)
    low = (1.0 - _pm_centre_prob(eps)) / (c + 1)  # == high / e^eps
    out = np.where((y >= left) & (y <= right), high, low)
    return np.where(np.abs(y) <= c, out, 0.0)


def _duchi_masses(y: np.ndarray, x: float, eps: float) -> np.ndarray:
    c = _duchi_bound(eps)
    p_plus = 0.5 + 0.5 * x / c
    tol = _ATOM_RTOL * c
    return np.where(np.abs(y - c) <= tol, p_plus, np.where(np.abs(y + c) <= tol, 1.0 - p_plus, 0.0))


def output_density(y: np.ndarray, x: float, *, mechanism: str, epsilon: float) -> np.ndarray:
    """Density of the output at ``y`` given input ``x``, both on the [-1, 1] scale.

    Precisely: the density with respect to a measure that dominates every input's output law, so that
    epsilon-LDP holds iff ``output_density(y, x) <= e^eps * output_density(y, x')`` for all y, x, x'.

    * ``laplace``, ``piecewise``: the ordinary (Lebesgue) probability density.
    * ``duchi``: the output takes only the two values ``+-C_D``; returns the point masses P[Y = y] there
      (y within a relative 1e-12 of an atom) and 0 elsewhere (density w.r.t. counting measure on the atoms).
    * ``hybrid``: w.r.t. Lebesgue measure plus unit point masses at ``+-C_D``: returns
      ``(1 - alpha) P_Duchi[Y = y]`` at the atoms and ``alpha * pdf_PM(y)`` elsewhere (just Duchi's masses
      when alpha = 0, i.e. eps <= eps*).
    """
    mech, eps, xv = _check_mechanism(mechanism), _check_epsilon(epsilon), _check_x(x)
    yy = np.asarray(y, dtype=np.float64)
    if mech == "laplace":
        return eps / 4 * np.exp(-eps / 2 * np.abs(yy - xv))
    if mech == "duchi":
        return _duchi_masses(yy, xv, eps)
    if mech == "piecewise":
        return _pm_density(yy, xv, eps)
    alpha = _hybrid_alpha(eps)
    masses = _duchi_masses(yy, xv, eps)
    if alpha == 0.0:
        return masses
    c = _duchi_bound(eps)
    at_atom = np.abs(np.abs(yy) - c) <= _ATOM_RTOL * c
    return np.where(at_atom, (1 - alpha) * masses, alpha * _pm_density(yy, xv, eps))


# ---------------------------------------------------------------------------------------------------------
# The exact law of what `privatize` emits (grid points and their probabilities), for the privacy tests.


def _hat_area(a: np.ndarray, b: np.ndarray, k: np.ndarray, step: float) -> np.ndarray:
    """Integral over [a, b] of the randomised-rounding weight of grid point k: max(0, 1 - |y/step - k|)."""
    def h(z: np.ndarray) -> np.ndarray:
        u = np.clip(z - k, -1.0, 1.0)
        return np.where(u < 0, (u + 1) ** 2 / 2, 1 - (1 - u) ** 2 / 2)

    return step * (h(np.asarray(b) / step) - h(np.asarray(a) / step))


def _pm_pmf(x: float, eps: float, m: int) -> tuple[np.ndarray, np.ndarray]:
    c, width = _pm_bound(eps), _pm_width(eps)
    step = c / m
    k = np.arange(-m, m + 1, dtype=np.float64)
    left = (c + 1) / 2 * x - width / 2
    right = left + width
    high = _pm_centre_prob(eps) / width
    low = (1.0 - _pm_centre_prob(eps)) / (c + 1)
    p = low * _hat_area(-c, left, k, step) + high * _hat_area(left, right, k, step) + low * _hat_area(right, c, k,
                                                                                                      step)
    return k * step, p


def _exp_moments(a: float, b: float, x: float, s: float, lam: float) -> tuple[float, float]:
    """(int_a^b f, int_a^b (y - a) f) for f(y) = lam/2 e^(s (y - x)) (one side of a Laplace density)."""
    ea, eb = math.exp(s * (a - x)), math.exp(s * (b - x))
    m0 = lam / 2 * (eb - ea) / s
    m1 = lam / 2 * (((b - a) / s - 1 / s ** 2) * eb - (-1 / s ** 2) * ea)
    return m0, m1


def _laplace_pmf(x: float, eps: float) -> tuple[np.ndarray, np.ndarray]:
    b = _range_bound(mechanism="laplace", epsilon=eps)
    m = grid_points(mechanism="laplace", epsilon=eps)
    step, lam = b / m, 1.0 / laplace_scale(eps)
    p = np.zeros(2 * m + 1)
    p[0] += 0.5 * math.exp(-lam * (x + b))  # the clamp's atom at -B (= grid point -M)
    p[-1] += 0.5 * math.exp(-lam * (b - x))  # and at +B
    for j in range(-m, m):  # cell [j step, (j+1) step] feeds grid points j and j + 1
        lo, hi = j * step, (j + 1) * step
        cuts = [lo, hi] if not lo < x < hi else [lo, x, hi]
        for a, e in zip(cuts[:-1], cuts[1:], strict=False):
            s = lam if e <= x else -lam
            m0, m1 = _exp_moments(a, e, x, s, lam)
            frac1 = m1 + (a - lo) * m0  # int (y - lo) f over [a, e]
            p[j + m + 1] += frac1 / step
            p[j + m] += m0 - frac1 / step
    return np.arange(-m, m + 1) * step, p


def output_pmf(x: float, *, mechanism: str, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """Every value `privatize` can emit for input x in [-1, 1] (on the [-1, 1] scale) and its exact probability.

    The same values for every x (the floating-point-safe support); epsilon-LDP means that for each value the
    probabilities under any two inputs differ by at most a factor e^eps (tests check it on this law, and that
    samples follow it).
    """
    mech, eps, xv = _check_mechanism(mechanism), _check_epsilon(epsilon), _check_x(x)
    if mech == "laplace":
        return _laplace_pmf(xv, eps)
    cd = _duchi_bound(eps)
    p_plus = 0.5 + 0.5 * xv / cd
    duchi = (np.array([-cd, cd]), np.array([1 - p_plus, p_plus]))
    if mech == "duchi" or (mech == "hybrid" and _hybrid_alpha(eps) == 0.0):
        return duchi
    values, probs = _pm_pmf(xv, eps, grid_points(mechanism=mech, epsilon=eps))
    if mech == "piecewise":
        return values, probs
    alpha = _hybrid_alpha(eps)
    values = np.concatenate([values, duchi[0]])
    probs = np.concatenate([alpha * probs, (1 - alpha) * duchi[1]])
    order = np.argsort(values, kind="stable")
    return values[order], probs[order]
