"""One privatised release per patient-day: the day's forecasting sufficient statistics, noised on the device.

Unit of privacy: one patient-day. Neighbouring inputs are two versions of one device's whole UTC day (glucose,
insulin and carbs, any values); every release of a day depends on that day's data only, and a device releases
once per day. Each release is (epsilon, delta)-DP for that day's data (pure epsilon-DP for ``gram-laplace``);
days are disjoint, so one day's guarantee never degrades, and all of a patient's k days together compose
(``patient_level``): rho-zCDP adds up over days (Bun and Steinke, TCC 2016) for the Gaussian mechanisms, epsilon
adds up for the pure one.

Mechanisms (all over the standardised window vectors z of ``federation.day_features``, DIM = 15):

* ``gram-gauss`` (default): the day's Gram matrix G = sum of w z z^T over its windows, each window weighted
  by w = min(1, WINDOW_CLIP_SQ / |z|^2) and the whole day scaled so trace(G) <= TRACE_CAP. A linear (ridge)
  forecaster needs nothing else (sufficient-statistics perturbation: Zhang et al., "Functional Mechanism",
  VLDB 2012; Y.-X. Wang, "Revisiting differentially private linear regression", UAI 2018; its local form in
  Duchi, Jordan, Wainwright, JASA 2018). Sensitivity: G and G' are positive semi-definite with trace <= T, so
  ||G - G'||_F^2 = ||G||_F^2 + ||G'||_F^2 - 2 tr(G G') <= 2 T^2 (tr(G G') >= 0 for PSD matrices, and
  ||G||_F <= tr G); the release is the isometric half-vectorisation svec(G) (upper triangle, off-diagonals times
  sqrt 2, so ||svec G||_2 = ||G||_F), L2 sensitivity sqrt(2) T whatever the day held.
  Noise: the discrete Gaussian (Canonne, Kamath, Steinke 2020) on svec(G) rounded to a lattice; it is
  rho-zCDP with rho = D^2 / (2 sigma^2) for lattice sensitivity D (their Theorem 14, whose extra term is
  below 1e-300 at sigma >= 4096 lattice steps), converted to (epsilon, delta) with their Corollary 13.
* ``gram-laplace``: the same statistic, pure epsilon-DP with discrete Laplace noise (geometric mechanism) on the
  L1 sensitivity 2 T (1 + (DIM - 1)/sqrt 2) (for PSD G with trace <= T, |G_ij| <= (G_ii + G_jj)/2).
* ``window-sample``: population division in the spirit of LDP-IDS (Ren et al., SIGMOD 2022): the device picks
  SAMPLE_WINDOWS of its windows at random (with replacement) and releases those vectors, each clipped to
  |z|^2 <= SAMPLE_CLIP_SQ, with the discrete Gaussian (L2 sensitivity 2 sqrt(SAMPLE_CLIP_SQ k)); the receiver
  corrects E[z~ z~^T] = z z^T + var I (errors in variables). Kept as the measured alternative.

Floating point: the statistic is rounded to a lattice (step ``ReleaseParams.lattice_step``) and the noise is
an exact integer draw (``device.discrete_noise``), so the released integers have exactly the analysed law
(Mironov, CCS 2012). Rounding moves each coordinate by < 1 lattice step, which the lattice sensitivity
includes (+ sqrt(n) in L2, + n in L1). A day without windows still releases (noise only): whether a day was
released at all does not depend on the data.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from federation import day_features as F
from federation.errors import SchemaError, WearfedError
from federation.privacy_rng import PrivacyRNG
from federation.series import PatientSeries

from .discrete_noise import discrete_gaussian, discrete_laplace

RELEASE_VERSION = 1
UNIT = "patient-day"
MECHANISMS = ("gram-gauss", "gram-laplace", "window-sample")
DEFAULT_MECHANISM = "gram-gauss"
DEFAULT_EPSILON = 8.0  # per patient-day
DEFAULT_DELTA = 1e-6  # per patient-day (Gaussian mechanisms)
EPSILON_RANGE = (0.05, 64.0)
DELTA_RANGE = (1e-15, 1e-3)

WINDOW_CLIP_SQ = 100.0  # per-window |z|^2 cap (a weight, for robustness; the sensitivity rests on TRACE_CAP)
TRACE_CAP = 2500.0  # per-day trace cap: the median day of the public derivation (sim.ldp_release.public_constants)
SAMPLE_WINDOWS = 1
SAMPLE_CLIP_SQ = 64.0
SVEC_DIM = F.DIM * (F.DIM + 1) // 2
# Lattice resolution: sigma (Gaussian) or the scale (Laplace) is about this many lattice steps, so rounding adds
# under 1% to the sensitivity for epsilon >= 1 and the exact samplers stay within int64.
LATTICE_NOISE_STEPS = 4096
_FLOAT_SLACK = 1e-9  # relative: covers float rounding of traces, norms and PSD-ness in the sensitivity bounds
_UPPER = np.triu_indices(F.DIM)
_SVEC_WEIGHT = np.where(_UPPER[0] == _UPPER[1], 1.0, math.sqrt(2.0))
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class DayReleaseError(WearfedError, ValueError):
    """A bad release parameter or input; the message names the field."""


# ---------------------------------------------------------------------------------------------------------
# zCDP <-> (epsilon, delta), Canonne, Kamath, Steinke 2020, Corollary 13.


def zcdp_delta(*, rho: float, epsilon: float) -> float:
    """Smallest delta such that rho-zCDP implies (epsilon, delta)-DP (any alpha > 1 gives a valid bound)."""
    if rho <= 0:
        return 0.0
    lo, hi = 1.0 + 1e-9, max(2.0, (epsilon + 1) / (2 * rho) + 2)
    for _ in range(200):  # the bound is convex in alpha: bisect on its derivative's sign
        a = (lo + hi) / 2
        if (2 * a - 1) * rho - epsilon + math.log1p(-1 / a) < 0:
            lo = a
        else:
            hi = a
    a = (lo + hi) / 2
    log_delta = (a - 1) * (a * rho - epsilon) + a * math.log1p(-1 / a) - math.log(a - 1)
    return min(1.0, math.exp(log_delta)) if log_delta < 700 else 1.0


def _boundary(ok: Callable[[float], bool], lo: float, hi: float) -> tuple[float, float]:
    """Bisect [lo, hi] to the switch of a monotone predicate (ok(lo) != ok(hi)); returns the final bracket."""
    for _ in range(200):
        mid = (lo + hi) / 2
        if ok(mid) == ok(lo):
            lo = mid
        else:
            hi = mid
    return lo, hi


def zcdp_epsilon(*, rho: float, delta: float) -> float:
    """Smallest epsilon such that rho-zCDP implies (epsilon, delta)-DP."""
    if rho <= 0:
        return 0.0
    hi = rho + 2 * math.sqrt(rho * math.log(1 / delta))  # Bun and Steinke's standard bound: always enough
    return _boundary(lambda e: zcdp_delta(rho=rho, epsilon=e) <= delta, 0.0, hi)[1]


def zcdp_rho(*, epsilon: float, delta: float) -> float:
    """Largest rho such that rho-zCDP implies (epsilon, delta)-DP."""
    return _boundary(lambda r: zcdp_delta(rho=r, epsilon=epsilon) <= delta, 0.0, epsilon + 1.0)[0]


# ---------------------------------------------------------------------------------------------------------
# Parameters: everything follows from (mechanism, epsilon, delta) and the spec's constants, so a receiver
# recomputes them instead of trusting the wire.


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise DayReleaseError(f"{name} must be a real number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise DayReleaseError(f"{name} must be finite, got {out!r}")
    return out


@dataclass(frozen=True)
class ReleaseParams:
    """How one mechanism releases at one budget: lattice, noise and the resulting guarantee per patient-day."""

    mechanism: str
    epsilon: float  # declared budget per patient-day (what the odometer charges)
    delta: float  # 0.0 for the pure mechanism
    coords: int  # integers per release
    lattice_step: float  # real units per lattice step
    sensitivity: float  # in lattice steps: L2 (Gaussian mechanisms) or L1 (Laplace), rounding included
    sigma2: int | None  # discrete Gaussian variance, lattice steps^2
    laplace_scale: tuple[int, int] | None  # discrete Laplace scale as (num, den)
    rho: float | None  # zCDP per patient-day (Gaussian mechanisms)
    epsilon_actual: float  # the guarantee the noise really gives (<= epsilon)

    @property
    def noise_variance(self) -> float:
        """Variance of the noise on each released coordinate, in real units (before any decoding)."""
        h2 = self.lattice_step ** 2
        if self.sigma2 is not None:
            return self.sigma2 * h2  # the discrete Gaussian's variance is below sigma2 (CKS 2020, Cor. 9)
        num, den = self.laplace_scale  # type: ignore[misc]
        p = math.exp(-den / num)
        return 2 * p / (1 - p) ** 2 * h2


def _gaussian_params(mechanism: str, epsilon: float, delta: float, coords: int, real_sens: float
                     ) -> ReleaseParams:
    rho_target = zcdp_rho(epsilon=epsilon, delta=delta)
    ratio = 1 / math.sqrt(2 * rho_target)  # sigma / sensitivity
    steps = max(64, round(LATTICE_NOISE_STEPS / ratio))  # real sensitivity in lattice steps
    h = real_sens * (1 + _FLOAT_SLACK) / steps
    sens = steps + math.sqrt(coords)  # + rounding: each coordinate moves < 1 step
    sigma2 = math.ceil(sens * sens / (2 * rho_target))
    # CKS 2020 Theorem 14: rho = eps_hat^2 / 2, eps_hat = min(sqrt(D^2/s2 + 2 tau n), D/sqrt(s2) + 2 tau sqrt(n)),
    # tau = 10 sum_k exp(-2 pi^2 s2 k/(k+1)) (< 1e-300 here).
    tau = 10 * sum(math.exp(-2 * math.pi ** 2 * sigma2 * k / (k + 1)) for k in range(1, 50))
    eps_hat = min(math.sqrt(sens * sens / sigma2 + 2 * tau * coords),
                  sens / math.sqrt(sigma2) + 2 * tau * math.sqrt(coords))
    rho = eps_hat * eps_hat / 2
    return ReleaseParams(mechanism, epsilon, delta, coords, h, sens, sigma2, None, rho,
                         zcdp_epsilon(rho=rho, delta=delta))


def release_params(*, mechanism: str, epsilon: float, delta: float) -> ReleaseParams:
    """The lattice and noise of ``mechanism`` at ``epsilon`` per patient-day (``delta`` ignored, and 0, for
    ``gram-laplace``). Raises DayReleaseError naming the bad field."""
    if not isinstance(mechanism, str) or mechanism not in MECHANISMS:
        raise DayReleaseError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")
    eps = _check_real("epsilon", epsilon)
    if not EPSILON_RANGE[0] <= eps <= EPSILON_RANGE[1]:
        raise DayReleaseError(f"epsilon must lie in [{EPSILON_RANGE[0]}, {EPSILON_RANGE[1]}] per patient-day, "
                              f"got {eps!r}")
    if mechanism == "gram-laplace":
        return _params(mechanism, eps, 0.0)
    dlt = _check_real("delta", delta)
    if not DELTA_RANGE[0] <= dlt <= DELTA_RANGE[1]:
        raise DayReleaseError(f"delta must lie in [{DELTA_RANGE[0]:g}, {DELTA_RANGE[1]:g}], got {dlt!r}")
    return _params(mechanism, eps, dlt)


@functools.lru_cache(maxsize=64)
def _params(mechanism: str, eps: float, dlt: float) -> ReleaseParams:  # validated floats only (see above)
    if mechanism == "gram-laplace":
        real_l1 = 2 * TRACE_CAP * (1 + (F.DIM - 1) / math.sqrt(2)) * (1 + _FLOAT_SLACK)
        steps = max(64, round(LATTICE_NOISE_STEPS * eps))
        h = real_l1 / steps
        sens = steps + SVEC_DIM  # + rounding
        den = 2 ** 16
        num = math.ceil(Fraction(sens * den) / Fraction(eps))  # scale rounded up: epsilon_actual <= epsilon
        return ReleaseParams(mechanism, eps, 0.0, SVEC_DIM, h, float(sens), None, (num, den), None,
                             sens * den / num)
    if mechanism == "gram-gauss":
        return _gaussian_params(mechanism, eps, dlt, SVEC_DIM, math.sqrt(2) * TRACE_CAP)
    coords = SAMPLE_WINDOWS * F.DIM
    return _gaussian_params(mechanism, eps, dlt, coords, 2 * math.sqrt(SAMPLE_CLIP_SQ * SAMPLE_WINDOWS))


# ---------------------------------------------------------------------------------------------------------
# Statistics (batches of days, so studies run the device's own code vectorised).


def svec(g: np.ndarray) -> np.ndarray:
    """Isometric half-vectorisation (..., DIM, DIM) -> (..., SVEC_DIM): upper triangle, off-diagonals x sqrt 2."""
    return np.asarray(g)[..., _UPPER[0], _UPPER[1]] * _SVEC_WEIGHT


def unsvec(v: np.ndarray) -> np.ndarray:
    """Inverse of ``svec``: (..., SVEC_DIM) -> symmetric (..., DIM, DIM)."""
    v = np.asarray(v, dtype=np.float64)
    out = np.zeros(v.shape[:-1] + (F.DIM, F.DIM))
    vals = v / _SVEC_WEIGHT
    out[..., _UPPER[0], _UPPER[1]] = vals
    out[..., _UPPER[1], _UPPER[0]] = vals
    return out


def _day_vectors(glucose: np.ndarray, insulin: np.ndarray, carbs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(glucose, dtype=np.float64)
    if g.ndim != 2 or g.shape[1] != F.STEPS_PER_DAY:
        raise DayReleaseError(f"glucose: expected (days, {F.STEPS_PER_DAY}), got shape {g.shape}")
    z, valid = F.window_vectors(g, insulin, carbs, day_only=True)
    if not np.isfinite(z).all():
        raise DayReleaseError("features: non-finite window vector (input validation should have stopped this)")
    return z, valid


def day_grams(glucose: np.ndarray, insulin: np.ndarray, carbs: np.ndarray) -> np.ndarray:
    """Clipped Gram matrices (days, DIM, DIM) of days given as (days, 288) grids: per-window weight
    min(1, WINDOW_CLIP_SQ/|z|^2), then the day scaled so its trace is at most TRACE_CAP."""
    z, _ = _day_vectors(glucose, insulin, carbs)
    norm2 = np.einsum("dki,dki->dk", z, z)
    w = np.minimum(1.0, WINDOW_CLIP_SQ / np.maximum(norm2, 1e-300))
    g = np.einsum("dk,dki,dkj->dij", w, z, z)
    trace = np.einsum("dii->d", g)
    scale = np.minimum(1.0, TRACE_CAP * (1 - _FLOAT_SLACK) / np.maximum(trace, 1e-300))
    return g * scale[:, None, None]


def day_samples(glucose: np.ndarray, insulin: np.ndarray, carbs: np.ndarray, *, rng: PrivacyRNG) -> np.ndarray:
    """SAMPLE_WINDOWS window vectors per day (days, k, DIM), drawn uniformly with replacement among the day's
    windows and clipped to |z|^2 <= SAMPLE_CLIP_SQ; zeros for a day without windows."""
    z, valid = _day_vectors(glucose, insulin, carbs)
    days = z.shape[0]
    counts = valid.sum(axis=1)
    picks = rng.integers(2 ** 30, (days, SAMPLE_WINDOWS)) % np.maximum(counts, 1)[:, None]
    order = np.argsort(~valid, axis=1, kind="stable")  # valid anchors first, in time order
    anchors = np.take_along_axis(order, picks, axis=1)
    out = np.take_along_axis(z, anchors[..., None], axis=1) * (counts > 0)[:, None, None]
    norm2 = np.einsum("dki,dki->dk", out, out)
    return out * np.sqrt(np.minimum(1.0, SAMPLE_CLIP_SQ / np.maximum(norm2, 1e-300)))[..., None]


def statistics(glucose: np.ndarray, insulin: np.ndarray, carbs: np.ndarray, *, mechanism: str,
               rng: PrivacyRNG) -> np.ndarray:
    """The real vector each day releases before noise: (days, coords)."""
    if mechanism in ("gram-gauss", "gram-laplace"):
        return svec(day_grams(glucose, insulin, carbs))
    if mechanism == "window-sample":
        s = day_samples(glucose, insulin, carbs, rng=rng)
        return s.reshape(s.shape[0], -1)
    raise DayReleaseError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")


def privatise(stats: np.ndarray, *, params: ReleaseParams, rng: PrivacyRNG) -> np.ndarray:
    """Round (days, coords) statistics to the lattice and add exact integer noise: (days, coords) int64."""
    x = np.asarray(stats, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != params.coords:
        raise DayReleaseError(f"statistics: expected (days, {params.coords}), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise DayReleaseError("statistics: non-finite value")
    q = np.rint(x / params.lattice_step).astype(np.int64)
    if params.sigma2 is not None:
        noise = discrete_gaussian(sigma2=params.sigma2, size=q.size, rng=rng)
    else:
        num, den = params.laplace_scale  # type: ignore[misc]
        noise = discrete_laplace(scale_num=num, scale_den=den, size=q.size, rng=rng)
    return q + noise.reshape(q.shape)


# ---------------------------------------------------------------------------------------------------------
# The message and its cost.


@dataclass(frozen=True)
class PrivacyCost:
    """What one release spends: the declared epsilon per patient-day, its delta and the accountant."""

    epsilon: float
    delta: float
    unit: str
    mechanism: str
    accountant: str
    rho: float | None = None  # zCDP per patient-day, for composing a patient's days (Gaussian mechanisms)


def _accountant(mechanism: str) -> str:
    if mechanism == "gram-laplace":
        return "pure epsilon-DP, discrete Laplace (geometric) mechanism; days compose by summing epsilon"
    return "rho-zCDP of the discrete Gaussian (CKS 2020 Thm 14), (epsilon, delta) by CKS Cor. 13; days add rho"


@dataclass(frozen=True)
class DayRelease:
    """One device's privatised release for one UTC day; ``values`` are lattice integers (see ReleaseParams)."""

    day: str  # YYYY-MM-DD (UTC)
    mechanism: str
    epsilon: float
    delta: float
    values: tuple[int, ...]
    spec: str = F.FEATURE_SPEC
    unit: str = UNIT
    version: int = RELEASE_VERSION

    @property
    def params(self) -> ReleaseParams:
        return release_params(mechanism=self.mechanism, epsilon=self.epsilon, delta=self.delta)

    def cost(self) -> PrivacyCost:
        p = self.params
        return PrivacyCost(p.epsilon, p.delta, UNIT, self.mechanism, _accountant(self.mechanism), p.rho)

    def to_dict(self) -> dict:
        """Plain types for CBOR (``cbor2.dumps``); short keys, the lattice integers as a list."""
        return {"v": self.version, "spec": self.spec, "day": self.day, "unit": self.unit, "mech": self.mechanism,
                "eps": self.epsilon, "delta": self.delta, "q": list(self.values)}

    @classmethod
    def from_dict(cls, doc: object) -> DayRelease:
        """Validate a decoded message; raises SchemaError naming the first bad field."""
        if not isinstance(doc, dict):
            raise SchemaError(f"day release: expected a map, got {type(doc).__name__}")
        if doc.get("v") != RELEASE_VERSION:
            raise SchemaError(f"v: unsupported day-release version {doc.get('v')!r}")
        if doc.get("spec") != F.FEATURE_SPEC:
            raise SchemaError(f"spec: expected {F.FEATURE_SPEC!r}, got {doc.get('spec')!r}")
        if doc.get("unit") != UNIT:
            raise SchemaError(f"unit: expected {UNIT!r}, got {doc.get('unit')!r}")
        day = doc.get("day")
        if not isinstance(day, str) or not _DAY_RE.match(day):
            raise SchemaError(f"day: expected YYYY-MM-DD, got {day!r}")
        try:
            dt.date.fromisoformat(day)
        except ValueError:
            raise SchemaError(f"day: not a calendar date: {day!r}") from None
        mech = doc.get("mech")
        eps, delta = doc.get("eps"), doc.get("delta")
        try:
            params = release_params(mechanism=mech, epsilon=eps, delta=delta)  # type: ignore[arg-type]
        except (DayReleaseError, TypeError) as exc:
            raise SchemaError(f"mech/eps/delta: {exc}") from None
        if mech == "gram-laplace" and delta != 0:
            raise SchemaError(f"delta: the pure mechanism has delta 0, got {delta!r}")
        q = doc.get("q")
        if not isinstance(q, list) or len(q) != params.coords:
            raise SchemaError(f"q: expected a list of {params.coords} integers, got "
                              f"{type(q).__name__} of length {len(q) if isinstance(q, list) else '-'}")
        for i, x in enumerate(q):
            if isinstance(x, bool) or not isinstance(x, int) or abs(x) >= 2 ** 53:
                raise SchemaError(f"q[{i}]: expected an integer below 2**53 in magnitude, got {x!r}")
        return cls(day, mech, float(eps), float(delta), tuple(q))  # type: ignore[arg-type]


def _day_name(day_start: int) -> str:
    return dt.datetime.fromtimestamp(day_start, dt.UTC).strftime("%Y-%m-%d")


def release_days(glucose: np.ndarray, insulin: np.ndarray, carbs: np.ndarray, *, day_starts: np.ndarray,
                 epsilon: float, delta: float = DEFAULT_DELTA, mechanism: str = DEFAULT_MECHANISM,
                 rng: PrivacyRNG) -> list[DayRelease]:
    """Releases for many days at once, each from its own (288,) grids (rows of (days, 288) arrays)."""
    params = release_params(mechanism=mechanism, epsilon=epsilon, delta=delta)
    stats = statistics(glucose, insulin, carbs, mechanism=mechanism, rng=rng)
    if len(day_starts) != stats.shape[0]:
        raise DayReleaseError(f"day_starts: {len(day_starts)} for {stats.shape[0]} days")
    if any(int(s) % 86400 for s in day_starts):
        raise DayReleaseError("day_starts: every day must start at a UTC midnight (a multiple of 86400)")
    values = privatise(stats, params=params, rng=rng)
    return [DayRelease(_day_name(int(s)), mechanism, params.epsilon, params.delta, tuple(int(v) for v in row))
            for s, row in zip(day_starts, values, strict=True)]


def release_day(day: PatientSeries | F.DayGrid, *, day_start: int | None = None, epsilon: float = DEFAULT_EPSILON,
                delta: float = DEFAULT_DELTA, mechanism: str = DEFAULT_MECHANISM,
                rng: PrivacyRNG) -> tuple[DayRelease, PrivacyCost]:
    """The release of one patient-day and what it costs.

    ``day`` is the device's own raw data: a PatientSeries (then ``day_start``, UTC midnight in unix seconds, picks
    the day) or a DayGrid. Out-of-range values are clipped, non-finite ones raise SchemaError naming the field.
    """
    if not isinstance(rng, PrivacyRNG):
        raise TypeError(f"rng must be a PrivacyRNG, got {type(rng).__name__}")
    if isinstance(day, PatientSeries):
        if day_start is None:
            raise DayReleaseError("day_start: needed to cut a day out of a PatientSeries")
        grid = F.day_grid(day, day_start=day_start)
    elif isinstance(day, F.DayGrid):
        grid = day
    else:
        raise TypeError(f"day must be a PatientSeries or DayGrid, got {type(day).__name__}")
    (release,) = release_days(grid.glucose[None], grid.insulin[None], grid.carbs[None],
                              day_starts=np.array([grid.day_start]), epsilon=epsilon, delta=delta,
                              mechanism=mechanism, rng=rng)
    return release, release.cost()


def patient_level(*, cost: PrivacyCost, days: int, delta: float) -> tuple[float, float]:
    """(epsilon, delta) for all of a patient's ``days`` released days together (whole days replaced):
    summed epsilon for the pure mechanism; summed rho, converted at ``delta``, for the Gaussian ones."""
    if days < 1:
        raise DayReleaseError(f"days must be >= 1, got {days}")
    if cost.rho is None:
        return cost.epsilon * days, 0.0
    return zcdp_epsilon(rho=cost.rho * days, delta=delta), delta
