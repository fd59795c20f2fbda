"""Virtual patients for studies and replays, from either source, in one form: (name, group, times, BG, CGM).

- "uva-padova": the vectorised UVA/Padova cohort (`sim.cohort`); training cohorts start with the 30
  published subjects, held-out patients are resampled subjects drawn with another seed (never seen in training).
- "synthetic": the spine's simple generator (`device.sensor.synthetic_trace`), for fast smoke runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from device.sensor import synthetic_trace
from federation.errors import ConfigError

SOURCES = ("uva-padova", "synthetic")


@dataclass(frozen=True)
class PatientTrace:
    name: str
    group: str
    times: np.ndarray  # unix seconds (int64), on the sensor grid
    bg: np.ndarray  # true blood glucose, mg/dL
    cgm: np.ndarray  # sensor reading, mg/dL, NaN where there is none


def _uva_padova(cohort, *, days: float, seed: int, sensor: str, start: int) -> list[PatientTrace]:  # noqa: ANN001
    from sim.cohort import simulate

    traces = simulate(cohort, days=days, seed=seed, sensor=sensor,
                      start=datetime.fromtimestamp(start, UTC).replace(tzinfo=None))
    times = start + traces.minutes.astype(np.int64) * 60
    return [PatientTrace(name, group, times, traces.bg[i], traces.cgm[i])
            for i, (name, group) in enumerate(zip(traces.subjects, traces.groups, strict=True))]


def training_patients(source: str, n: int, *, days: float, seed: int, start: int, sensor: str = "dexcom-g7",
                      offset: int = 0) -> list[PatientTrace]:
    """Patients `offset .. offset + n - 1` of the training cohort (the same patient for the same index)."""
    if source == "synthetic":
        names = [f"patient-{k:04d}" for k in range(offset, offset + n)]
        return [PatientTrace(name, "synthetic", *synthetic_trace(seed=seed, patient=name, start=start, days=days))
                for name in names]
    if source == "uva-padova":
        from sim.cohort import make_cohort

        cohort = make_cohort(offset + n, seed=seed).take(range(offset, offset + n))
        return _uva_padova(cohort, days=days, seed=seed, sensor=sensor, start=start)
    raise ConfigError(f"cohort source must be one of {SOURCES}, got {source!r}")


def heldout_patients(source: str, n: int, *, days: float, seed: int, start: int,
                     sensor: str = "dexcom-g7") -> list[PatientTrace]:
    """Patients no training node has: other virtual subjects, other seeds."""
    held_seed = seed + 1_000_003
    if source == "synthetic":
        names = [f"heldout-{k:03d}" for k in range(n)]
        return [PatientTrace(name, "synthetic", *synthetic_trace(seed=held_seed, patient=name, start=start, days=days))
                for name in names]
    if source == "uva-padova":
        from sim.cohort import make_cohort

        cohort = make_cohort(n, seed=held_seed, published_first=False)
        return _uva_padova(cohort, days=days, seed=held_seed, sensor=sensor, start=start)
    raise ConfigError(f"cohort source must be one of {SOURCES}, got {source!r}")
