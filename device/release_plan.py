"""What a device releases, when, and at which epsilon: the release mode, pluggable.

A `ReleaseMode` turns a device's trace (glucose readings, and insulin and announced carbs where the hub knows
them) into a time-ordered plan of items: every raw glucose reading (so the on-device forecaster sees it) and
the releases, each with its stream, raw value and LDP spec. The publisher charges each release's epsilon to the
odometer, privatises it, spools it and sends it; it never knows which mode planned it. A second mode (daily
releases, researched in device/day_release.py) only has to implement `ReleaseMode`.

`StreamRelease` ("stream", the default) releases as the data come, under the device's privacy unit:

* ``patient-day`` (default): the day's budget B (epsilon per patient-day, at most 8 by default) is split over the
  streams the device has: glucose 3/4 and insulin and carbs 1/8 each when it knows them, else glucose all of it.
  Glucose: every reading at ``share * B / readings_per_day``; if that is below the policy floor (0.01 per
  release: `federation.ldp_range`), every k-th reading only, k the smallest keeping it above. Insulin and carbs:
  one release per hour of the hour's total (insulin units delivered, carbohydrate grams announced) at
  ``share * B / 24``. Sequential composition of pure epsilon-LDP releases: a day's releases sum to at most B
  (delta 0); the odometer enforces it.
* ``reading`` (event-level, a labelled option): every release at `epsilon_per_reading`; the odometer's
  `daily_cap` bounds a day. The guarantee is then per release, not per patient.

Status messages carry no patient data (state, privacy randomness, model and refusals; health events stay on the
device), so they cost nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from device.ldp import LDPSpec
from device.sensor import SENSOR_RANGE
from federation.ldp_range import EPSILON_FLOOR
from federation.telemetry import CARBS, GLUCOSE, INSULIN, PATIENT_DAY, READING, STREAMS, Privacy

DAY_S, HOUR_S = 86_400, 3_600
SHARES_WITH_TREATMENTS = {GLUCOSE: 0.75, INSULIN: 0.125, CARBS: 0.125}
# Clip ranges of the hourly totals (the mechanisms' [lo, hi]): insulin units per hour (basal about 0.5-2 U/h,
# a meal bolus up to ~20 U), announced carbohydrate grams per hour (a large meal ~100-150 g).
TREATMENT_RANGES = {INSULIN: (0.0, 30.0), CARBS: (0.0, 200.0)}
ACCOUNTANT = "pure-epsilon sequential composition"


@dataclass(frozen=True)
class DeviceTrace:
    """What one device knows: glucose readings (unix s, mg/dL), and per-step insulin and carbs where known."""

    times: np.ndarray
    glucose: np.ndarray
    treatment_times: np.ndarray | None = None  # the grid insulin and carbs are given on (None: unknown)
    insulin: np.ndarray | None = None  # units delivered in each step
    carbs: np.ndarray | None = None  # grams announced in each step

    @property
    def has_treatments(self) -> bool:
        return self.treatment_times is not None and len(self.treatment_times) > 0


@dataclass(frozen=True)
class PlanItem:
    t: int  # simulated unix seconds
    stream: str
    raw: float  # the value before local DP (stays on the device)
    release: bool  # False: a glucose reading only observed locally (forecaster), not released

    @property
    def key(self) -> tuple[int, int]:
        """Order and resume position: time, then stream."""
        return self.t, STREAMS.index(self.stream)


class ReleaseMode(Protocol):
    name: str

    def privacy(self) -> Privacy:
        """The declaration on the wire: unit and budget per day."""

    def streams(self) -> tuple[str, ...]:
        """The streams this mode releases."""

    def spec(self, stream: str) -> LDPSpec | None:
        """The LDP spec of a stream's releases (None: raw values, studies only)."""

    def plan(self, trace: DeviceTrace) -> list[PlanItem]:
        """Every item of the trace in (t, stream) order."""

    def describe(self) -> dict:
        """For the status topic and logs: mode, unit, budget, accountant, per-stream epsilon."""


@dataclass(frozen=True)
class StreamRelease:
    mechanism: str  # an LDP mechanism, or "none" (raw, studies only)
    unit: str  # PATIENT_DAY or READING
    budget: float  # epsilon per patient-day (unit patient-day) or the daily cap (unit reading)
    epsilon_per_reading: float  # unit reading only
    interval_s: int  # the sensor's reading interval
    treatments: bool  # the device knows insulin and carbs
    name: str = "stream"

    def __post_init__(self) -> None:
        if self.unit not in (PATIENT_DAY, READING):
            raise ValueError(f"privacy unit must be {PATIENT_DAY} or {READING}, got {self.unit!r}")

    def _shares(self) -> dict[str, float]:
        return dict(SHARES_WITH_TREATMENTS) if self.treatments else {GLUCOSE: 1.0}

    @property
    def readings_per_day(self) -> int:
        return DAY_S // self.interval_s

    @property
    def glucose_every(self) -> int:
        """Release every k-th glucose reading (k = 1 unless the per-release epsilon would fall below the floor)."""
        if self.unit == READING:
            return 1
        per_day = self._shares()[GLUCOSE] * self.budget
        return max(1, math.ceil(EPSILON_FLOOR * self.readings_per_day / per_day))

    def epsilon(self, stream: str) -> float:
        if self.unit == READING:
            return self.epsilon_per_reading
        share = self._shares()[stream] * self.budget
        if stream == GLUCOSE:
            return share / math.ceil(self.readings_per_day / self.glucose_every)
        return share / 24

    def streams(self) -> tuple[str, ...]:
        return tuple(self._shares())

    def privacy(self) -> Privacy:
        return Privacy(unit=self.unit, budget=self.budget)

    def spec(self, stream: str) -> LDPSpec | None:
        if self.mechanism == "none":
            return None
        lo, hi = SENSOR_RANGE if stream == GLUCOSE else TREATMENT_RANGES[stream]
        return LDPSpec(mechanism=self.mechanism, epsilon=self.epsilon(stream), lo=lo, hi=hi)

    def describe(self) -> dict:
        return {"mode": self.name, "unit": self.unit, "budget_per_day": self.budget, "delta": 0.0,
                "accountant": ACCOUNTANT, "mechanism": self.mechanism,
                "epsilon_per_release": {s: self.epsilon(s) for s in self.streams()},
                "glucose_every": self.glucose_every}

    def plan(self, trace: DeviceTrace) -> list[PlanItem]:
        items = []
        k = self.glucose_every
        for t, g in zip(trace.times.tolist(), trace.glucose.tolist(), strict=True):
            slot = (int(t) % DAY_S) // self.interval_s
            items.append(PlanItem(int(t), GLUCOSE, float(g), release=slot % k == 0))
        if self.treatments and trace.has_treatments:
            items += self._hourly(trace)
        items.sort(key=lambda it: it.key)
        return items

    def _hourly(self, trace: DeviceTrace) -> list[PlanItem]:
        """One release per stream per full hour: the total over (hour - 1 h, hour]."""
        tt = np.asarray(trace.treatment_times, dtype=np.int64)
        first = (int(tt.min()) // HOUR_S + 1) * HOUR_S
        hours = np.arange(first, int(tt.max()) + 1, HOUR_S)
        out = []
        for stream, values in ((INSULIN, trace.insulin), (CARBS, trace.carbs)):
            v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
            csum = np.concatenate([[0.0], np.cumsum(v)])
            hi = np.searchsorted(tt, hours, side="right")
            lo = np.searchsorted(tt, hours - HOUR_S, side="right")
            totals = csum[hi] - csum[lo]
            out += [PlanItem(int(h), stream, float(x), release=True) for h, x in zip(hours, totals, strict=True)]
        return out
