"""CGM sensor models: sample interval, clip range, simglucose's noise, and what real wear adds.

Noise (``simglucose/sensor/noise_gen.py``, Breton & Kovatchev 2008): every 15 min an AR(1)-like process
``e_0 = z_0``, ``e_k = PACF * (e_{k-1} + z_k)`` with standard normal ``z``; each value is mapped through the
Johnson-SU transform ``xi + lambda * sinh((e - gamma) / delta)``; blocks of ten 15-min values (150 min, the
block's last value starting the next block) are interpolated to the sample interval with a not-a-knot cubic
spline. Parameters come from ``data/sensor_params.csv``.

Wear, on top (our addition, not in simglucose): sensor sessions of fixed length with a warm-up without
readings at the start of each, a random gap between one sensor's end and the next one's insertion, random
dropouts (Poisson events with exponential durations), and an optional linear calibration drift (mg/dL per
day of sensor age, from a given day of each session). At ``t = 0`` a subject is somewhere in a session, drawn
uniformly. The noise process runs on across sensor changes. Readings are
``clip(interstitial glucose + noise + drift)``, or NaN where the sensor gives none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import lru_cache

import numpy as np
from scipy.interpolate import CubicSpline

from federation.errors import ConfigError
from firmware_profiles import canonical_name

from .params import read_table

NOISE_STEP_MIN = 15
NOISE_BLOCK = 10  # 15-min values per interpolation block, as simglucose's PRECOMPUTE


@dataclass(frozen=True)
class NoiseParams:
    """Johnson-SU marginal and PACF of simglucose's sensor noise."""

    pacf: float
    gamma: float
    lam: float
    delta: float
    xi: float


def _simglucose_sensors() -> dict[str, dict[str, float]]:
    rows = read_table("sensor_params.csv")
    return {r["Name"]: {k: float(v) for k, v in r.items() if k != "Name"} for r in rows}


def _noise_of(row: dict[str, float]) -> NoiseParams:
    return NoiseParams(row["PACF"], row["gamma"], row["lambda"], row["delta"], row["xi"])


@dataclass(frozen=True)
class SensorProfile:
    """A CGM model: cadence, range, noise and wear (warm-up, session, gaps, dropouts, drift)."""

    name: str
    interval_min: int
    clip_low: float
    clip_high: float
    noise_params: NoiseParams
    noise: bool = True
    warmup_min: float = 0.0
    session_days: float = math.inf
    gap_min: tuple[float, float] = (0.0, 0.0)
    dropouts_per_day: float = 0.0
    dropout_mean_min: float = 0.0
    drift_mg_dl_per_day: float = 0.0
    drift_from_day: float = 0.0

    def __post_init__(self) -> None:
        if self.interval_min < 1 or (self.noise and (NOISE_BLOCK * NOISE_STEP_MIN) % self.interval_min):
            raise ConfigError(f"interval_min must be a positive divisor of 150, got {self.interval_min}")
        if not self.clip_low < self.clip_high:
            raise ConfigError(f"clip_low ({self.clip_low}) must be below clip_high ({self.clip_high})")
        if self.warmup_min < 0 or self.session_days <= 0 or self.warmup_min >= self.session_days * 1440:
            raise ConfigError("warmup_min must be >= 0 and shorter than session_days")
        if not 0 <= self.gap_min[0] <= self.gap_min[1]:
            raise ConfigError(f"gap_min must be (low, high) with 0 <= low <= high, got {self.gap_min}")
        if self.dropouts_per_day < 0 or self.dropout_mean_min < 0:
            raise ConfigError("dropouts_per_day and dropout_mean_min must be >= 0")
        if self.drift_from_day < 0:
            raise ConfigError(f"drift_from_day must be >= 0, got {self.drift_from_day}")

    def noise_free(self) -> SensorProfile:
        """The same sensor without measurement noise (wear effects kept)."""
        return replace(self, noise=False)

    def ideal(self) -> SensorProfile:
        """Noise-free, always on, no drift: the sensor used for agreement with simglucose."""
        return replace(
            self, noise=False, warmup_min=0.0, session_days=math.inf, gap_min=(0.0, 0.0),
            dropouts_per_day=0.0, dropout_mean_min=0.0, drift_mg_dl_per_day=0.0, drift_from_day=0.0,
        )

    def describe(self) -> dict[str, object]:
        """JSON-friendly description for trace metadata."""
        out = asdict(self)
        out["session_days"] = None if math.isinf(self.session_days) else self.session_days
        out["gap_min"] = list(self.gap_min)
        return out


def _profiles() -> dict[str, SensorProfile]:
    sg = _simglucose_sensors()
    dex, grt, nav = (_noise_of(sg[k]) for k in ("Dexcom", "GuardianRT", "Navigator"))
    wear = {"gap_min": (10.0, 180.0), "dropouts_per_day": 1.5, "dropout_mean_min": 20.0}
    return {
        # simglucose's own sensors: no wear effects.
        "simglucose-dexcom": SensorProfile(
            "simglucose-dexcom", 3, sg["Dexcom"]["min"], sg["Dexcom"]["max"], dex
        ),
        "simglucose-guardianrt": SensorProfile(
            "simglucose-guardianrt", 5, sg["GuardianRT"]["min"], sg["GuardianRT"]["max"], grt
        ),
        "simglucose-navigator": SensorProfile(
            "simglucose-navigator", 1, sg["Navigator"]["min"], sg["Navigator"]["max"], nav
        ),
        # Device-like profiles: cadence, range and wear after the devices' public specifications; the noise
        # is simglucose's (not fitted to these devices).
        "dexcom-g7": SensorProfile(
            "dexcom-g7", 5, 40.0, 400.0, dex, warmup_min=30.0, session_days=10.0, **wear
        ),
        "dexcom-g6": SensorProfile(
            "dexcom-g6", 5, 40.0, 400.0, dex, warmup_min=120.0, session_days=10.0, **wear
        ),
        "libre-3": SensorProfile("libre-3", 1, 40.0, 400.0, nav, warmup_min=60.0, session_days=14.0, **wear),
        "guardianrt": SensorProfile(
            "guardianrt", 5, sg["GuardianRT"]["min"], sg["GuardianRT"]["max"], grt,
            warmup_min=120.0, session_days=7.0, **wear,
        ),
    }


SENSOR_PROFILES: dict[str, SensorProfile] = _profiles()


def get_sensor(sensor: str | SensorProfile) -> SensorProfile:
    """A profile by name (see ``SENSOR_PROFILES``) or the profile itself."""
    if isinstance(sensor, SensorProfile):
        return sensor
    sensor = canonical_name(sensor)  # libre3 is libre-3, as the firmware profile is named
    if sensor not in SENSOR_PROFILES:
        raise ConfigError(f"sensor: unknown profile {sensor!r}; known: {sorted(SENSOR_PROFILES)}")
    return SENSOR_PROFILES[sensor]


@lru_cache(maxsize=16)
def _block_matrix(interval_min: int) -> np.ndarray:
    """Linear map from one block's 11 fifteen-minute values to its readings at interval, 2*interval, ..."""
    knots = np.arange(NOISE_BLOCK + 1) * float(NOISE_STEP_MIN)
    times = np.arange(1, NOISE_BLOCK * NOISE_STEP_MIN // interval_min + 1) * float(interval_min)
    basis = CubicSpline(knots, np.eye(NOISE_BLOCK + 1), axis=0, bc_type="not-a-knot")(times)
    return np.ascontiguousarray(basis)  # (per_block, 11)


def noise_from_innovations(z: np.ndarray, interval_min: int, params: NoiseParams, count: int) -> np.ndarray:
    """Sensor noise (n, count) at ``interval_min`` from standard-normal innovations ``z`` (n, 15-min steps).

    Reading ``j`` is the noise at ``(j + 1) * interval_min`` on the 15-min process's clock, matching the
    sequence simglucose's ``CGMNoise`` yields for the same innovations. ``z`` needs at least
    ``noise_steps_needed(count, interval_min)`` columns.
    """
    per_block = NOISE_BLOCK * NOISE_STEP_MIN // interval_min
    blocks = -(-count // per_block)
    steps = NOISE_BLOCK * blocks + 1
    if z.shape[1] < steps:
        raise ConfigError(f"z has {z.shape[1]} innovations, {steps} needed")
    e = np.empty((z.shape[0], steps))
    e[:, 0] = z[:, 0]
    for k in range(1, steps):
        e[:, k] = params.pacf * (e[:, k - 1] + z[:, k])
    eps = params.xi + params.lam * np.sinh((e - params.gamma) / params.delta)
    starts = np.arange(blocks) * NOISE_BLOCK
    windows = eps[:, starts[:, None] + np.arange(NOISE_BLOCK + 1)]  # (n, blocks, 11)
    readings = windows @ _block_matrix(interval_min).T  # (n, blocks, per_block)
    return readings.reshape(z.shape[0], -1)[:, :count]


def noise_steps_needed(count: int, interval_min: int) -> int:
    """Number of 15-min innovations ``noise_from_innovations`` needs for ``count`` readings."""
    per_block = NOISE_BLOCK * NOISE_STEP_MIN // interval_min
    return NOISE_BLOCK * (-(-count // per_block)) + 1


@dataclass(frozen=True)
class SensorStream:
    """Precomputed per-reading offsets and availability for a cohort: reading ``r`` is at ``r * interval``."""

    profile: SensorProfile
    offset: np.ndarray  # (readings, n) noise + drift, mg/dL
    available: np.ndarray  # (readings, n) bool

    def read(self, r: int, interstitial: np.ndarray) -> np.ndarray:
        """Reading ``r`` for interstitial glucose (n,): clipped, NaN where the sensor gives none."""
        value = np.clip(interstitial + self.offset[r], self.profile.clip_low, self.profile.clip_high)
        return np.where(self.available[r], value, np.nan)


def _sessions(
    profile: SensorProfile, rng: np.random.Generator, end_min: float
) -> tuple[np.ndarray, np.ndarray]:
    """Session start times (minutes) covering [0, end_min] for one subject, and their lengths."""
    if math.isinf(profile.session_days):
        return np.array([-profile.warmup_min]), np.array([math.inf])
    length = profile.session_days * 1440.0
    starts = [-rng.random() * length]
    while starts[-1] + length <= end_min:
        starts.append(starts[-1] + length + rng.uniform(*profile.gap_min))
    return np.array(starts), np.full(len(starts), length)


def _wear(
    profile: SensorProfile, rngs: Sequence[np.random.Generator], times: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Availability (readings, n) and drift (readings, n) from sessions, warm-ups, dropouts."""
    n, count = len(rngs), times.size
    available = np.zeros((count, n), dtype=bool)
    drift = np.zeros((count, n), dtype=np.float32)
    interval = float(profile.interval_min)
    end = float(times[-1])
    for i, rng in enumerate(rngs):
        starts, lengths = _sessions(profile, rng, end)
        on = np.zeros(count, dtype=bool)
        age = np.zeros(count)
        for st, length in zip(starts, lengths, strict=True):
            inside = (times >= st + profile.warmup_min) & (times < st + length)
            on |= inside
            age = np.where(inside, times - st, age)
        if profile.dropouts_per_day > 0 and profile.dropout_mean_min > 0:
            events = rng.poisson(profile.dropouts_per_day * (end + interval) / 1440.0)
            begin = rng.uniform(0.0, end + interval, events)
            stop = begin + rng.exponential(profile.dropout_mean_min, events)
            first = np.ceil(begin / interval).astype(np.int64)
            last = np.minimum(np.ceil(stop / interval).astype(np.int64), count)
            mark = np.zeros(count + 1, dtype=np.int64)
            np.add.at(mark, first, 1)
            np.add.at(mark, last, -1)
            on &= np.cumsum(mark[:count]) == 0
        available[:, i] = on
        if profile.drift_mg_dl_per_day:
            days_past = np.maximum(age / 1440.0 - profile.drift_from_day, 0.0)
            drift[:, i] = np.where(on, profile.drift_mg_dl_per_day * days_past, 0.0)
    return available, drift


def build_stream(
    profile: SensorProfile,
    readings: int,
    noise_rngs: Sequence[np.random.Generator],
    wear_rngs: Sequence[np.random.Generator],
) -> SensorStream:
    """Offsets and availability for ``readings`` readings of each subject (one generator per subject)."""
    n = len(noise_rngs)
    times = np.arange(readings, dtype=np.float64) * profile.interval_min
    available, offset = _wear(profile, wear_rngs, times)
    if profile.noise:
        steps = noise_steps_needed(readings, profile.interval_min)
        z = np.stack([rng.standard_normal(steps) for rng in noise_rngs]) if n else np.zeros((0, steps))
        noise = noise_from_innovations(z, profile.interval_min, profile.noise_params, readings)
        offset += noise.T.astype(np.float32)
    return SensorStream(profile, np.ascontiguousarray(offset), np.ascontiguousarray(available))
