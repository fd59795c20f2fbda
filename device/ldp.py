"""Local differential privacy (pure epsilon-LDP) for one bounded scalar reading, e.g. glucose in mg/dL.

A reading is clipped to [lo, hi], mapped affinely to t in [-1, 1], perturbed by one of four mechanisms and
mapped back, so every output is an *unbiased* estimate of the clipped reading (it may leave [lo, hi]).
Each call of a mechanism on one reading is epsilon-LDP; the unit of privacy is one reading (event level),
and a device composes readings sequentially (see ``device.odometer``).

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

epsilon must lie in (0, MAX_EPSILON]; past 100, float64 cannot represent the mechanisms (nor would they
protect anything). All numeric parameters are keyword-only. Only numpy is used: this runs on a Pi Zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MECHANISMS: tuple[str, ...] = ("laplace", "duchi", "piecewise", "hybrid")

# Wang et al. 2019, Sec. III-B: HM mixes in PM only above this epsilon (~0.6094).
HYBRID_EPS_STAR: float = math.log(
    (-5 + 2 * np.cbrt(6353 - 405 * math.sqrt(241)) + 2 * np.cbrt(6353 + 405 * math.sqrt(241))) / 27
)

# Past this, e^(eps/2) makes the mechanisms numerically degenerate (and the "privacy" meaningless).
MAX_EPSILON: float = 100.0

# Outputs this close (relatively) to a Duchi atom count as that atom in ``output_density``.
_ATOM_RTOL = 1e-12


class LDPError(ValueError):
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
    if not 0 < eps <= MAX_EPSILON:
        raise LDPError(f"epsilon must be in (0, {MAX_EPSILON:g}], got {eps!r}")
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
        lo = _check_real("lo", self.lo)
        hi = _check_real("hi", self.hi)
        if not lo < hi:
            raise LDPError(f"lo must be < hi, got lo={lo!r}, hi={hi!r}")
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)


# ---------------------------------------------------------------------------------------------------------
# Parameters of each mechanism on [-1, 1], in numerically stable forms (no e^eps overflow for large eps).


def _duchi_bound(eps: float) -> float:
    """C_D = (e^eps + 1)/(e^eps - 1)."""
    return 1.0 / math.tanh(eps / 2)


def _pm_width(eps: float) -> float:
    """C - 1 = 2/(e^(eps/2) - 1): the width of PM's centre piece (kept apart from C, which rounds to 1)."""
    return 2.0 / math.expm1(eps / 2)


def _pm_bound(eps: float) -> float:
    """C = (e^(eps/2) + 1)/(e^(eps/2) - 1)."""
    return 1.0 + _pm_width(eps)


def _pm_centre_prob(eps: float) -> float:
    """e^(eps/2)/(e^(eps/2) + 1): probability of the centre piece [l(t), r(t)]."""
    return 1.0 / (1.0 + math.exp(-eps / 2))


def _hybrid_alpha(eps: float) -> float:
    """Probability that HM runs PM (Wang et al. 2019, Sec. III-B)."""
    return -math.expm1(-eps / 2) if eps > HYBRID_EPS_STAR else 0.0


def output_bound(*, mechanism: str, epsilon: float) -> float:
    """Largest |output| on the [-1, 1] scale (inf for Laplace); a receiver may reject anything beyond it."""
    mech, eps = _check_mechanism(mechanism), _check_epsilon(epsilon)
    if mech == "laplace":
        return math.inf
    if mech == "duchi" or (mech == "hybrid" and _hybrid_alpha(eps) == 0.0):
        return _duchi_bound(eps)
    return _pm_bound(eps)  # PM's C exceeds Duchi's C_D, so it bounds the hybrid too


# ---------------------------------------------------------------------------------------------------------
# Samplers on [-1, 1]; t is a float64 array already clipped to [-1, 1].


def _sample_laplace(t: np.ndarray, eps: float, rng: np.random.Generator) -> np.ndarray:
    return t + rng.laplace(0.0, 2.0 / eps, size=t.shape)


def _sample_duchi(t: np.ndarray, eps: float, rng: np.random.Generator) -> np.ndarray:
    c = _duchi_bound(eps)
    # 1/2 + t (e^eps - 1)/(2 e^eps + 2) == 1/2 + t / (2 C_D)
    plus = rng.random(size=t.shape) < 0.5 + 0.5 * t / c
    return np.where(plus, c, -c)


def _sample_piecewise(t: np.ndarray, eps: float, rng: np.random.Generator) -> np.ndarray:
    width = _pm_width(eps)
    c = 1.0 + width
    left = (c + 1) / 2 * t - width / 2
    right = left + width
    centre = rng.random(size=t.shape) < _pm_centre_prob(eps)
    u = rng.random(size=t.shape)
    inner = left + u * width
    # The outer pieces [-C, l) and (r, C] have total length C + 1; walk along them.
    w = u * (c + 1)
    left_len = left + c
    outer = np.where(w < left_len, w - c, right + (w - left_len))
    return np.clip(np.where(centre, inner, outer), -c, c)


def _sample_hybrid(t: np.ndarray, eps: float, rng: np.random.Generator) -> np.ndarray:
    alpha = _hybrid_alpha(eps)
    if alpha == 0.0:
        return _sample_duchi(t, eps, rng)
    use_pm = rng.random(size=t.shape) < alpha
    return np.where(use_pm, _sample_piecewise(t, eps, rng), _sample_duchi(t, eps, rng))


_SAMPLERS = {
    "laplace": _sample_laplace,
    "duchi": _sample_duchi,
    "piecewise": _sample_piecewise,
    "hybrid": _sample_hybrid,
}


def privatize(values: np.ndarray | float, *, spec: LDPSpec, rng: np.random.Generator) -> np.ndarray:
    """Clip ``values`` to [spec.lo, spec.hi] and return unbiased epsilon-LDP estimates in the same unit.

    Each element is privatised independently (epsilon per element). The result is a new float64 array of
    the input's shape (0-d for a scalar); it may fall outside [lo, hi]. Non-finite inputs raise LDPError.
    """
    if not isinstance(spec, LDPSpec):
        raise TypeError(f"spec must be an LDPSpec, got {type(spec).__name__}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise LDPError(f"values must be numeric: {exc}") from None
    if not np.all(np.isfinite(x)):
        raise LDPError("values must be finite (found NaN or inf)")
    half = (spec.hi - spec.lo) / 2
    mid = spec.lo + half
    t = np.clip((np.clip(x, spec.lo, spec.hi) - mid) / half, -1.0, 1.0)
    y = _SAMPLERS[spec.mechanism](t, spec.epsilon, rng)
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
    """Closed-form variance of the output for input x in [-1, 1] (see the module docstring)."""
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
