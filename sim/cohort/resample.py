"""New virtual subjects drawn around the 30 published ones, seeded and reproducible.

Method, per age group (10 published subjects):

1. Transform the free parameters (log for positive ones, logit for the fractions ``b`` and ``d``; the therapy
   numbers ``CR``, ``CF``, ``TDI``, ``Age`` included) and draw from a multivariate normal with the group's
   sample mean and covariance ``(1 - alpha) S + alpha diag(S)`` (``S`` the sample covariance, alpha 0.1),
   times ``spread``: a multivariate log-normal. Why joint: a physiological subject's parameters are
   correlated (body weight with volumes and clearances, insulin sensitivity with CR and CF); independent
   perturbation breaks that. Why the diagonal share: with 10 subjects and 32 parameters ``S`` has rank 9,
   and new subjects should not be confined to the span of the published ones.
2. Reject draws outside the group's observed range widened by ``margin`` (25% of the range each side), so
   that rates stay where the published subjects (and the 1-min RK4) live.
3. Keep ``HEb``, ``f``, ``ke1``, ``ke2``, ``Fsnc`` (fixed in the 2008 set) and recompute the steady state
   (``Gpb``, ``Gtb``, ``Vm0``, ``Ipb``, ``Ilb``, ``m30``, ``u2ss``, ``isc1ss``, ``isc2ss``, ``kp1``, ``Rdb``,
   ``PCRb``, initial state) from the basal equations, so each subject starts at rest at its ``Gb`` under
   its basal insulin; reject draws that break them (``EGPb <= Fsnc``, ``kmin >= kmax``, ``Gtb <= 0``,
   ``Gpb >= ke2``, ``u2ss <= 0``) or whose fastest rate exceeds 2/min (published maximum 1.23/min).
4. Screen (``screen=True``): simulate a reference day (45/70/80 g at 07:00/12:00/18:00, basal-bolus) and keep
   the subject only if its nadir, mean and peak blood glucose stay near the envelope of its group's published
   subjects on the same day; without it about a third of new adults leave the published adults' envelope.

Subject ``j`` of a group depends only on ``(seed, group, j)``, not on how many are drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from federation.errors import ConfigError

from .model import fastest_rate
from .params import GROUPS, MODEL_PARAMS, N_STATES, QUEST_PARAMS, Cohort, interleaved_subjects, load_subjects
from .scenario import fixed_meals
from .sensors import get_sensor
from .simulate import simulate

LOG_PARAMS: tuple[str, ...] = (
    "BW", "EGPb", "Gb", "Ib", "kabs", "kmax", "kmin", "Vg", "Vi", "Vmx", "Km0", "k2", "k1", "p2u", "m1", "m5",
    "CL", "m2", "m4", "ki", "kp2", "kp3", "kd", "ksc", "ka1", "ka2", "CR", "CF", "TDI", "Age",
)
LOGIT_PARAMS: tuple[str, ...] = ("b", "d")
KEPT_PARAMS: tuple[str, ...] = ("HEb", "f", "ke1", "ke2", "Fsnc")
MAX_TRIES = 1000
MAX_RATE_PER_MIN = 2.0  # fastest first-order rate allowed (published max 1.23): one RK4 step per minute
# Screen on a reference day (simglucose's mean meals at their mean times): nadir >= 0.8 x the group's lowest
# nadir, mean within +-15% of the group's range of means, peak <= 1.2 x the group's highest peak.
REFERENCE_MEALS: tuple[tuple[float, float], ...] = ((420.0, 45.0), (720.0, 70.0), (1080.0, 80.0))
SCREEN_SENSOR = "simglucose-guardianrt"
SCREEN_NADIR, SCREEN_MEAN, SCREEN_PEAK = 0.8, 0.15, 1.2


_Drawn = tuple[dict[str, float], np.ndarray]


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1.0 - p))


def _expit(v: float) -> float:
    return float(1.0 / (1.0 + np.exp(-v)))


def _transform(group: Cohort) -> np.ndarray:
    cols = [np.log(group.params[k]) for k in LOG_PARAMS] + [_logit(group.params[k]) for k in LOGIT_PARAMS]
    return np.stack(cols, axis=1)


def steady_state(free: dict[str, float]) -> _Drawn | None:
    """Derived basal parameters and initial state for free + kept parameters, or None if not physiological."""
    p = dict(free)
    p["Gpb"] = p["Gb"] * p["Vg"]
    p["Gtb"] = (p["Fsnc"] - p["EGPb"] + p["k1"] * p["Gpb"]) / p["k2"]
    if p["EGPb"] <= p["Fsnc"] or p["kmin"] >= p["kmax"] or p["Gtb"] <= 0 or p["Gpb"] >= p["ke2"]:
        return None
    p["Vm0"] = (p["EGPb"] - p["Fsnc"]) * (p["Km0"] + p["Gtb"]) / p["Gtb"]
    p["Ipb"] = p["Ib"] * p["Vi"]
    p["m30"] = p["m1"] * p["HEb"] / (1.0 - p["HEb"])
    p["Ilb"] = p["m2"] * p["Ipb"] / (p["m1"] + p["m30"])
    p["u2ss"] = (p["m2"] + p["m4"]) * p["Ipb"] - p["m1"] * p["Ilb"]
    if p["u2ss"] <= 0 or fastest_rate({k: np.asarray(v) for k, v in p.items()}) > MAX_RATE_PER_MIN:
        return None
    p["isc1ss"] = p["u2ss"] / (p["ka1"] + p["kd"])
    p["isc2ss"] = p["kd"] * p["isc1ss"] / p["ka2"]
    p["kp1"] = p["EGPb"] + p["kp2"] * p["Gpb"] + p["kp3"] * p["Ib"]
    p["Rdb"] = p["EGPb"]
    p["PCRb"] = p["Rdb"] / p["Gb"]
    x0 = np.array([0.0, 0.0, 0.0, p["Gpb"], p["Gtb"], p["Ipb"], 0.0, p["Ib"], p["Ib"], p["Ilb"],
                   p["isc1ss"], p["isc2ss"], p["Gpb"]])
    return p, x0


@dataclass(frozen=True)
class _Sampler:
    """The fitted distribution of one group in transformed space."""

    mean: np.ndarray
    dev: np.ndarray
    sd: np.ndarray
    low: np.ndarray
    high: np.ndarray
    kept: dict[str, float]

    def draw(self, rng: np.random.Generator, alpha: float, spread: float) -> _Drawn:
        """One draw inside the box that satisfies the basal equations (redrawn until it does)."""
        scale_dev = spread * np.sqrt((1.0 - alpha) / (len(self.dev) - 1))
        scale_diag = spread * np.sqrt(alpha) * self.sd
        for _ in range(MAX_TRIES):
            w, z = rng.standard_normal(len(self.dev)), rng.standard_normal(self.mean.size)
            theta = self.mean + scale_dev * (w @ self.dev) + scale_diag * z
            if np.any(theta < self.low) or np.any(theta > self.high):
                continue
            free = dict(self.kept)
            free.update({k: float(np.exp(v)) for k, v in zip(LOG_PARAMS, theta, strict=False)})
            logits = theta[len(LOG_PARAMS):]
            free.update({k: _expit(v) for k, v in zip(LOGIT_PARAMS, logits, strict=True)})
            derived = steady_state(free)
            if derived is not None:
                return derived
        raise ConfigError(f"could not draw a physiological subject in {MAX_TRIES} tries; lower spread")


def _sampler(base: Cohort, margin: float) -> _Sampler:
    theta = _transform(base)
    width = theta.max(axis=0) - theta.min(axis=0)
    return _Sampler(
        mean=theta.mean(axis=0),
        dev=theta - theta.mean(axis=0),
        sd=theta.std(axis=0, ddof=1),
        low=theta.min(axis=0) - margin * width,
        high=theta.max(axis=0) + margin * width,
        kept={k: float(base.params[k][0]) for k in KEPT_PARAMS},
    )


def _reference_day(cohort: Cohort) -> np.ndarray:
    """(nadir, mean, peak) blood glucose per subject over the reference day, shape (n, 3)."""
    plan = fixed_meals(REFERENCE_MEALS, len(cohort))
    traces = simulate(cohort, days=1.0, seed=0, sensor=get_sensor(SCREEN_SENSOR).ideal(), meals=plan)
    bg = traces.bg.astype(np.float64)
    return np.stack([bg.min(axis=1), bg.mean(axis=1), bg.max(axis=1)], axis=1)


@lru_cache(maxsize=len(GROUPS))
def _envelope(group: str) -> tuple[float, float, float, float]:
    """Accepted (lowest nadir, lowest mean, highest mean, highest peak) for new subjects of ``group``."""
    ref = _reference_day(load_subjects([f"{group}#{i:03d}" for i in range(1, 11)]))
    return (
        SCREEN_NADIR * float(ref[:, 0].min()),
        (1.0 - SCREEN_MEAN) * float(ref[:, 1].min()),
        (1.0 + SCREEN_MEAN) * float(ref[:, 1].max()),
        SCREEN_PEAK * float(ref[:, 2].max()),
    )


def _build(group: str, seed: int, index: list[int], drawn: list[_Drawn]) -> Cohort:
    keys = (*MODEL_PARAMS, *QUEST_PARAMS)
    return Cohort(
        names=tuple(f"{group}-s{seed}-{j:04d}" for j in index),
        groups=(group,) * len(index),
        x0=np.stack([x0 for _, x0 in drawn]).reshape(len(index), N_STATES),
        params={k: np.array([p[k] for p, _ in drawn]) for k in keys},
        origin=tuple(f"resampled(seed={seed},group={group},index={j})" for j in index),
    )


def resample_group(
    group: str,
    count: int,
    seed: int,
    *,
    alpha: float = 0.1,
    spread: float = 1.0,
    margin: float = 0.25,
    screen: bool = True,
) -> Cohort:
    """``count`` new subjects of ``group`` ("child", "adolescent", "adult"), reproducible by ``seed``."""
    if group not in GROUPS:
        raise ConfigError(f"group must be one of {GROUPS}, got {group!r}")
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 1:
        raise ConfigError(f"count must be a positive integer, got {count!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    if not spread > 0:
        raise ConfigError(f"spread must be > 0, got {spread}")
    if not margin >= 0:
        raise ConfigError(f"margin must be >= 0, got {margin}")
    sampler = _sampler(load_subjects([f"{group}#{i:03d}" for i in range(1, 11)]), margin)
    gi = GROUPS.index(group)
    rngs = [np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(gi, j))) for j in range(count)]
    chosen: dict[int, _Drawn] = {}
    pending = list(range(count))
    for _ in range(MAX_TRIES):
        drawn = [sampler.draw(rngs[j], alpha, spread) for j in pending]
        if not screen:
            chosen.update(zip(pending, drawn, strict=True))
            break
        nadir_lo, mean_lo, mean_hi, peak_hi = _envelope(group)
        ref = _reference_day(_build(group, int(seed), pending, drawn))
        ok = (ref[:, 0] >= nadir_lo) & (ref[:, 1] >= mean_lo) & (ref[:, 1] <= mean_hi)
        ok &= ref[:, 2] <= peak_hi
        chosen.update((j, d) for j, d, good in zip(pending, drawn, ok, strict=True) if good)
        pending = [j for j, good in zip(pending, ok, strict=True) if not good]
        if not pending:
            break
    else:
        raise ConfigError(f"could not draw {group} subjects that pass the screen; lower spread")
    return _build(group, int(seed), list(range(count)), [chosen[j] for j in range(count)])


def make_cohort(patients: int, seed: int, *, published_first: bool = True) -> Cohort:
    """A cohort of ``patients``: the 30 published subjects (interleaved child, adolescent, adult) first, then
    resampled subjects round-robin over the groups. Subject ``k`` is the same whatever ``patients`` is."""
    if isinstance(patients, bool) or not isinstance(patients, int | np.integer) or patients < 1:
        raise ConfigError(f"patients must be a positive integer, got {patients!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    published = interleaved_subjects() if published_first else None
    take = min(patients, len(published)) if published is not None else 0
    cohort = published.take(range(take)) if published is not None and take else None
    extra = patients - take
    if extra:
        per_group = [len(range(g, extra, len(GROUPS))) for g in range(len(GROUPS))]
        parts = [resample_group(g, c, seed) for g, c in zip(GROUPS, per_group, strict=True) if c]
        slots = [np.arange(c) * len(GROUPS) + g for g, c in enumerate(per_group) if c]
        order = np.argsort(np.concatenate(slots))
        drawn = parts[0]
        for part in parts[1:]:
            drawn = drawn.concat(part)
        drawn = drawn.take(order)
        cohort = drawn if cohort is None else cohort.concat(drawn)
    assert cohort is not None
    return cohort
