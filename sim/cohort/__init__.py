"""Virtual-patient cohorts: the UVA/Padova T1D model as simglucose codes it, vectorised, with CGM sensors.

Programmatic use::

    from sim.cohort import make_cohort, simulate
    traces = simulate(make_cohort(100, seed=1), days=7, seed=1, sensor="dexcom-g7")
    traces.cgm  # (100, 2016) mg/dL, NaN where the sensor gave no reading

On disk: ``generate_cohort(patients=..., days=..., seed=..., out=...)`` writes Parquet traces (pyarrow is
imported only then, and by ``read_cohort``/``read_patient``).
"""

from typing import Any

from .generate import generate_cohort
from .params import GROUPS, Cohort, interleaved_subjects, load_subjects
from .resample import make_cohort, resample_group
from .scenario import MealPlan, fixed_meals, random_meals
from .sensors import SENSOR_PROFILES, SensorProfile, get_sensor
from .simulate import MODEL_VERSION, CohortTraces, simulate

__all__ = [
    "GROUPS",
    "MODEL_VERSION",
    "SENSOR_PROFILES",
    "Cohort",
    "CohortTraces",
    "MealPlan",
    "SensorProfile",
    "fixed_meals",
    "generate_cohort",
    "get_sensor",
    "interleaved_subjects",
    "load_subjects",
    "make_cohort",
    "random_meals",
    "read_cohort",
    "read_patient",
    "resample_group",
    "simulate",
]


def __getattr__(name: str) -> Any:
    if name in ("read_cohort", "read_patient"):
        from . import io

        return getattr(io, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
