"""A simple, deterministic synthetic CGM trace generator (a stand-in until the UVA/Padova cohort lands).

Glucose = basal level + meal excursions (x e^(1-x) bumps) + mismatched-insulin tail (slower bump) +
circadian swing + a slow AR(1) physiological wander + white sensor noise, clipped to the sensor's range.
Shapes are illustrative, not a physiological model: they give forecasting a realistic kind of structure
(post-prandial rises, returns to baseline, occasional lows), nothing more.
"""

from __future__ import annotations

import zlib

import numpy as np

SENSOR_RANGE = (40.0, 400.0)
MEAL_HOURS = (7.0, 12.5, 18.5)


def stable_seed(seed: int, name: str) -> np.random.SeedSequence:
    """A per-entity seed that is the same in every process and Python version."""
    return np.random.SeedSequence([seed, zlib.crc32(name.encode())])


def _bump(minutes: np.ndarray, peak_min: float) -> np.ndarray:
    """x * e^(1 - x) with x = t / peak: 0 at t = 0, 1 at the peak, a long tail back to 0."""
    x = np.clip(minutes, 0, None) / peak_min
    return x * np.exp(1 - x)


def synthetic_trace(
    *, seed: int, patient: str, start: int, days: float, interval_s: int = 300, noise_sd: float = 5.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (times [unix s], true glucose, CGM reading) on a regular grid, deterministic by (seed, patient)."""
    if days <= 0 or interval_s <= 0:
        raise ValueError(f"days and interval_s must be > 0 (got days={days}, interval_s={interval_s})")
    rng = np.random.default_rng(stable_seed(seed, patient))
    n = int(round(days * 86400 / interval_s))
    step_min = interval_s / 60.0
    minutes = np.arange(n) * step_min
    basal = rng.uniform(100, 160)
    sensitivity = rng.uniform(1.0, 2.2)  # peak rise in mg/dL per gram of carbohydrate
    insulin_match = rng.uniform(0.7, 1.35)  # <1 under-bolused (long highs), >1 over-bolused (late lows)
    meal_peak, insulin_peak = rng.uniform(45, 75), rng.uniform(120, 180)
    excursion = np.zeros(n)
    for day in range(int(np.ceil(days))):
        for hour in MEAL_HOURS:
            t_meal = (day * 24 + hour + rng.normal(0, 0.6)) * 60
            rise = rng.uniform(25, 95) * sensitivity
            excursion += rise * _bump(minutes - t_meal, meal_peak)
            excursion += rise * (1 - insulin_match) * _bump(minutes - t_meal, insulin_peak)
    circadian = 12 * np.sin(2 * np.pi * (minutes / 1440 - 0.2))
    wander = np.zeros(n)
    phi = 0.99 ** step_min
    for i in range(1, n):
        wander[i] = phi * wander[i - 1] + rng.normal(0, 3.0 * np.sqrt(step_min / 5))
    true_bg = np.clip(basal + excursion + circadian + wander, 25, 500)
    cgm = np.clip(true_bg + rng.normal(0, noise_sd, n), *SENSOR_RANGE)
    times = start + (np.arange(n) * interval_s).astype(np.int64)
    return times, true_bg, cgm
