"""Basal-bolus therapy and insulin pump, vectorised, as simglucose 0.2.11 behaves.

Controller (``simglucose/controller/basal_bolus_ctrller.py``, ``BBController``): basal ``u2ss * BW / 6000``
U/min; when carbohydrate was announced during the last control interval, a bolus of
``carbs / CR + (glucose > 150) * (glucose - target) / CF`` units (``CR``, ``CF`` from ``quest.csv``, target
140 mg/dL) spread evenly over the next interval. Pump (``simglucose/actuator/pump.py``, ``InsulinPump``):
each rate is rounded to the pump increment in pmol/min and clipped to its limits (``pump_params.csv``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from federation.errors import ConfigError

from .model import U_TO_PMOL
from .params import read_table

CORRECTION_THRESHOLD = 150.0  # mg/dL; simglucose corrects only above this, towards ``target``


@dataclass(frozen=True)
class Pump:
    """Increments (pmol/min) and limits (U/min) of an insulin pump."""

    name: str
    min_bolus: float
    max_bolus: float
    inc_bolus: float
    min_basal: float
    max_basal: float
    inc_basal: float

    @classmethod
    def named(cls, name: str = "Insulet") -> Pump:
        """A pump from ``pump_params.csv`` (``Insulet`` or ``Cozmo``)."""
        rows = {row["Name"]: row for row in read_table("pump_params.csv")}
        if name not in rows:
            raise ConfigError(f"pump: unknown pump {name!r}; known: {sorted(rows)}")
        r = rows[name]
        keys = ("min_bolus", "max_bolus", "inc_bolus", "min_basal", "max_basal", "inc_basal")
        return cls(name, *(float(r[k]) for k in keys))

    def basal(self, rate: np.ndarray) -> np.ndarray:
        """Delivered basal rate (U/min) for a requested one."""
        return _deliver(rate, self.inc_basal, self.min_basal, self.max_basal)

    def bolus(self, rate: np.ndarray) -> np.ndarray:
        """Delivered bolus rate (U/min) for a requested one."""
        return _deliver(rate, self.inc_bolus, self.min_bolus, self.max_bolus)


def _deliver(rate: np.ndarray, inc: float, low: float, high: float) -> np.ndarray:
    pmol = np.round(rate * U_TO_PMOL / inc) * inc
    return np.maximum(np.minimum(pmol / U_TO_PMOL, high), low)


class BasalBolusController:
    """simglucose's basal-bolus rule for a cohort, acting once per control interval."""

    def __init__(self, params: dict[str, np.ndarray], target: float = 140.0) -> None:
        if not np.isfinite(target) or target <= 0:
            raise ConfigError(f"target must be a positive glucose in mg/dL, got {target}")
        self.target = float(target)
        self.basal = params["u2ss"] * params["BW"] / U_TO_PMOL
        self.cr = params["CR"]
        self.cf = params["CF"]

    def bolus_rate(self, carbs_g: np.ndarray, glucose: np.ndarray, interval_min: int) -> np.ndarray:
        """Bolus rate (U/min) over the next interval; ``glucose`` may be NaN (no reading: no correction)."""
        correction = np.where(glucose > CORRECTION_THRESHOLD, (glucose - self.target) / self.cf, 0.0)
        units = np.where(carbs_g > 0, carbs_g / self.cr + correction, 0.0)
        return units / interval_min

    def describe(self) -> dict[str, object]:
        """JSON-friendly description for trace metadata."""
        return {
            "kind": "basal-bolus (simglucose BBController)",
            "target_mg_dl": self.target,
            "correction_above_mg_dl": CORRECTION_THRESHOLD,
        }
