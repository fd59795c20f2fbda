"""One patient's telemetry as every tier hands it to the window builder: glucose readings plus insulin and carbohydrate
events (the inputs a CGM hub knows besides glucose), each as (unix seconds, amount) arrays.

Gateways fill it from their store of privatised telemetry, hospitals from their clinical files, studies from the
cohort simulator. Amounts: glucose mg/dL, insulin units delivered at that time (boluses and basal alike), carbohydrates
grams announced at that time. Empty event arrays mean "none known", not "none taken": builders say which they assume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from federation.errors import SchemaError


def _empty() -> np.ndarray:
    return np.empty(0)


@dataclass(frozen=True)
class PatientSeries:
    times: np.ndarray  # unix seconds of the glucose readings
    glucose: np.ndarray  # mg/dL
    insulin_times: np.ndarray = field(default_factory=_empty)
    insulin_units: np.ndarray = field(default_factory=_empty)
    carb_times: np.ndarray = field(default_factory=_empty)
    carb_grams: np.ndarray = field(default_factory=_empty)

    def __post_init__(self) -> None:
        for a, b in (("times", "glucose"), ("insulin_times", "insulin_units"), ("carb_times", "carb_grams")):
            if np.shape(getattr(self, a)) != np.shape(getattr(self, b)):
                raise SchemaError(f"{a} and {b} differ in shape: {np.shape(getattr(self, a))} vs "
                                  f"{np.shape(getattr(self, b))}")

    @property
    def has_events(self) -> bool:
        return bool(np.size(self.insulin_times) or np.size(self.carb_times))
