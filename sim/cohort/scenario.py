"""Meal scenarios: announced carbohydrate (grams at a minute) per subject, random or fixed.

The random scenario draws each day independently with the distributions of simglucose's ``RandomScenario``
(``simglucose/simulation/scenario_gen.py``): six meal slots (breakfast, snack, lunch, snack, dinner, snack)
taken with probability 0.95/0.3/0.95/0.3/0.95/0.3, at a time of day from a normal distribution truncated to
the slot's window and rounded to the minute, with an amount ``max(round(N(mean, sd)), 0)`` grams. A meal
announced at minute ``m`` is eaten from ``m`` on at 5 g/min (see ``simulate``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, ndtri

from federation.errors import ConfigError

MEAL_PROBABILITY = np.array([0.95, 0.3, 0.95, 0.3, 0.95, 0.3])
TIME_LOW_MIN = np.array([5, 9, 10, 14, 16, 20]) * 60.0
TIME_HIGH_MIN = np.array([9, 10, 14, 16, 20, 23]) * 60.0
TIME_MEAN_MIN = np.array([7, 9.5, 12, 15, 18, 21.5]) * 60.0
TIME_SD_MIN = np.array([60, 30, 60, 30, 60, 30], dtype=float)
AMOUNT_MEAN_G = np.array([45, 10, 70, 10, 80, 10], dtype=float)
AMOUNT_SD_G = np.array([10, 5, 10, 5, 10, 5], dtype=float)
MINUTES_PER_DAY = 1440


@dataclass(frozen=True)
class MealPlan:
    """Meal announcements as events sorted by minute: subject index, minute from start, grams."""

    patient: np.ndarray
    minute: np.ndarray
    grams: np.ndarray
    kind: str = "custom"

    def announced_at(self, total_minutes: int) -> tuple[np.ndarray, np.ndarray]:
        """Event index bounds per minute: events ``bounds[m]:bounds[m+1]`` are announced at minute ``m``."""
        bounds = np.searchsorted(self.minute, np.arange(total_minutes + 1), side="left")
        return bounds, np.diff(bounds)

    def dense(self, n: int, total_minutes: int) -> np.ndarray:
        """Grams announced per minute as an (n, total_minutes) array."""
        grid = np.zeros((n, total_minutes))
        keep = self.minute < total_minutes
        np.add.at(grid, (self.patient[keep], self.minute[keep]), self.grams[keep])
        return grid


def _plan(patient: np.ndarray, minute: np.ndarray, grams: np.ndarray, kind: str) -> MealPlan:
    keep = grams > 0
    order = np.argsort(minute[keep], kind="stable")
    return MealPlan(
        patient=patient[keep][order].astype(np.int64),
        minute=minute[keep][order].astype(np.int64),
        grams=grams[keep][order].astype(np.float64),
        kind=kind,
    )


def fixed_meals(events: Sequence[tuple[float, float]], n: int) -> MealPlan:
    """The same meals for every subject: ``(minute from start, grams)`` pairs."""
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    ev = np.asarray(events, dtype=float).reshape(-1, 2)
    if np.any(ev[:, 0] < 0) or np.any(ev[:, 1] < 0):
        raise ConfigError("events: minutes and grams must be >= 0")
    minutes = np.rint(np.tile(ev[:, 0], n))
    return _plan(np.repeat(np.arange(n), len(ev)), minutes, np.tile(ev[:, 1], n), "custom")


def _truncated_normal(rng: np.random.Generator, size: tuple[int, ...]) -> np.ndarray:
    """Meal times (minutes of day) from each slot's truncated normal, by inverse CDF."""
    lo = ndtr((TIME_LOW_MIN - TIME_MEAN_MIN) / TIME_SD_MIN)
    hi = ndtr((TIME_HIGH_MIN - TIME_MEAN_MIN) / TIME_SD_MIN)
    u = rng.random(size)
    return TIME_MEAN_MIN + TIME_SD_MIN * ndtri(lo + u * (hi - lo))


def random_meals(
    rngs: Sequence[np.random.Generator], total_minutes: int, start_minute_of_day: int = 0
) -> MealPlan:
    """simglucose-style random meals for ``len(rngs)`` subjects (one generator each) over the window."""
    if total_minutes < 1:
        raise ConfigError(f"total_minutes must be >= 1, got {total_minutes}")
    if not 0 <= start_minute_of_day < MINUTES_PER_DAY:
        raise ConfigError(f"start_minute_of_day must be in [0, 1440), got {start_minute_of_day}")
    days = -(-(start_minute_of_day + total_minutes) // MINUTES_PER_DAY)
    patient, minute, grams = [], [], []
    for i, rng in enumerate(rngs):
        taken = rng.random((days, 6)) < MEAL_PROBABILITY
        tod = np.rint(_truncated_normal(rng, (days, 6)))
        amount = np.maximum(np.rint(rng.normal(AMOUNT_MEAN_G, AMOUNT_SD_G, (days, 6))), 0.0)
        offset = tod + (np.arange(days)[:, None] * MINUTES_PER_DAY - start_minute_of_day)
        keep = taken & (offset >= 0) & (offset < total_minutes)
        patient.append(np.full(int(keep.sum()), i))
        minute.append(offset[keep])
        grams.append(amount[keep])
    return _plan(np.concatenate(patient), np.concatenate(minute), np.concatenate(grams), "random")


def scenario_description(plan: MealPlan) -> dict[str, object]:
    """JSON-friendly description of a meal plan for trace metadata."""
    desc: dict[str, object] = {"kind": plan.kind, "meals": int(plan.minute.size), "eat_rate_g_per_min": 5.0}
    if plan.kind == "random":
        desc["source"] = "simglucose RandomScenario distributions (scenario_gen.py)"
        desc["probability"] = MEAL_PROBABILITY.tolist()
        desc["time_mean_h"] = (TIME_MEAN_MIN / 60).tolist()
        desc["amount_mean_g"] = AMOUNT_MEAN_G.tolist()
    return desc
