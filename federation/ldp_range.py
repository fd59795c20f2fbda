"""The parameters and output range of the device LDP mechanisms, defined once: the device samples with them
(`device.ldp`) and the gateway refuses anything outside them (`federation.telemetry.decode_batch`).

Everything is on the mechanisms' [-1, 1] input scale; `estimate_range` maps back to a stream's unit.

* Duchi et al. (JASA 2018): outputs +-C_D, C_D = coth(eps/2).
* Piecewise (Wang et al., ICDE 2019, Sec. III-A): outputs in [-C, C], C = coth(eps/4) = 1 + 2/(e^(eps/2) - 1).
* Hybrid (same paper, Sec. III-B): PM with probability alpha = 1 - e^(-eps/2) when eps > eps* ~= 0.61, else
  Duchi only (alpha = 0); its outputs are within C_D for eps <= eps* and within max(C, C_D) = C above.
* Laplace: t + Lap(2/eps) clamped to +-B, B = 1 + (2/eps) * LAPLACE_TAILS (tail mass e^-LAPLACE_TAILS = 2^-20
  beyond the clamp, so the clamp's bias is below 2^-20 of the scale), then rounded to the grid (below).

Floating-point safety (Mironov, "On significance of the least significant bits for differential privacy",
CCS 2012): Piecewise and Laplace outputs are randomised-rounded onto a fixed grid of `grid_points` points
spanning [-bound, bound] (the endpoints included), so the set of values a device can emit does not depend on
its input; see `device.ldp` for the mechanism and its restated guarantee. The grid step is at most 1/8 of
the PM centre piece (PM) or 1/4 of the Laplace scale 2/eps (Laplace).

Epsilon per release must lie in [EPSILON_FLOOR, epsilon_ceiling(mechanism)]: below the floor a single value can
reach millions of mg/dL (nothing useful, and a poisoning lever); above the ceiling (16, Laplace 8) some grid point's
probability falls below 2^-35, too close to the 2^-52 resolution of 53-bit uniforms for the floating-point
guarantee (`device.ldp`) to hold.
"""

from __future__ import annotations

import math

MECHANISMS: tuple[str, ...] = ("laplace", "duchi", "piecewise", "hybrid")
EPSILON_FLOOR = 0.01
EPSILON_CEILING = 16.0
LAPLACE_EPSILON_CEILING = 8.0  # its clamp tails reach 2^-20 e^-eps of the peak: 2^-34.2 per grid point at eps 8
LAPLACE_TAILS = 20 * math.log(2)  # clamp at this many Laplace scales: tail mass 2^-20
_MIN_GRID = 64  # grid points per half range at the least

# Wang et al. 2019, Sec. III-B: HM mixes in PM only above this epsilon (~0.6094).
HYBRID_EPS_STAR: float = math.log(
    (-5 + 2 * math.cbrt(6353 - 405 * math.sqrt(241)) + 2 * math.cbrt(6353 + 405 * math.sqrt(241))) / 27
)


def epsilon_ceiling(mechanism: str) -> float:
    """The largest epsilon per release the floating-point-safe mechanism supports (see the module docstring)."""
    return LAPLACE_EPSILON_CEILING if mechanism == "laplace" else EPSILON_CEILING


def duchi_bound(eps: float) -> float:
    """C_D = (e^eps + 1)/(e^eps - 1) = coth(eps/2)."""
    return 1.0 / math.tanh(eps / 2)


def pm_width(eps: float) -> float:
    """C - 1 = 2/(e^(eps/2) - 1): the width of PM's centre piece (kept apart from C, which rounds to 1)."""
    return 2.0 / math.expm1(eps / 2)


def pm_bound(eps: float) -> float:
    """C = (e^(eps/2) + 1)/(e^(eps/2) - 1) = coth(eps/4)."""
    return 1.0 + pm_width(eps)


def hybrid_alpha(eps: float) -> float:
    """Probability that HM runs PM (Wang et al. 2019, Sec. III-B)."""
    return -math.expm1(-eps / 2) if eps > HYBRID_EPS_STAR else 0.0


def laplace_scale(eps: float) -> float:
    """Lap(2/eps): sensitivity 2 on [-1, 1]."""
    return 2.0 / eps


def _check(mechanism: str, epsilon: float) -> None:
    if mechanism not in MECHANISMS:
        raise ValueError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")


def grid_points(*, mechanism: str, epsilon: float) -> int:
    """M: the rounded mechanisms (laplace, piecewise, the PM half of hybrid) emit k * bound / M, |k| <= M."""
    _check(mechanism, epsilon)
    if mechanism == "laplace":
        b = 1.0 + laplace_scale(epsilon) * LAPLACE_TAILS
        return max(_MIN_GRID, math.ceil(b / (laplace_scale(epsilon) / 4)))
    if mechanism in ("piecewise", "hybrid"):
        return max(_MIN_GRID, math.ceil(pm_bound(epsilon) / (pm_width(epsilon) / 8)))
    return 1  # Duchi: the two atoms +-C_D


def output_bound(*, mechanism: str, epsilon: float) -> float:
    """Largest |output| on the [-1, 1] scale; a receiver refuses anything beyond it."""
    _check(mechanism, epsilon)
    if mechanism == "laplace":
        return 1.0 + laplace_scale(epsilon) * LAPLACE_TAILS
    if mechanism == "duchi" or (mechanism == "hybrid" and hybrid_alpha(epsilon) == 0.0):
        return duchi_bound(epsilon)
    return max(pm_bound(epsilon), duchi_bound(epsilon))  # PM's C exceeds C_D, so it bounds the hybrid too


def estimate_range(*, mechanism: str, epsilon: float, lo: float, hi: float) -> tuple[float, float]:
    """Every value the mechanism can emit, mapped from [-1, 1] back to [lo, hi]'s unit (with float slack)."""
    c = output_bound(mechanism=mechanism, epsilon=epsilon)
    half, mid = (hi - lo) / 2, (hi + lo) / 2
    slack = 1e-9 * (abs(mid) + half * c)  # rounding of the affine map on the device
    return mid - half * c - slack, mid + half * c + slack
