"""Virtual patients for studies and replays, from either source, in one form: (name, group, times, BG, CGM,
insulin, carbs); `PatientTrace.series()` hands one to the window builders as a `federation.series.PatientSeries`.

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
from federation.series import PatientSeries

SOURCES = ("uva-padova", "synthetic")


@dataclass(frozen=True)
class PatientTrace:
    name: str
    group: str
    times: np.ndarray  # unix seconds (int64), on the sensor grid
    bg: np.ndarray  # true blood glucose, mg/dL
    cgm: np.ndarray  # sensor reading, mg/dL, NaN where there is none
    insulin: np.ndarray | None = None  # units delivered in [t, t + interval) (basal and boluses); None: not known
    carbs: np.ndarray | None = None  # grams announced in [t, t + interval); None: not known

    def series(self, glucose: np.ndarray | None = None) -> PatientSeries:
        """The patient as window builders take it: the CGM readings (or `glucose`, e.g. privatised readings, on
        the same timestamps; NaN = no reading) and the insulin and carb events (non-zero amounts only)."""
        g = self.cgm if glucose is None else np.asarray(glucose, dtype=np.float64)
        seen = ~np.isnan(g)
        kw = {}
        if self.insulin is not None:
            on = self.insulin > 0
            kw.update(insulin_times=self.times[on], insulin_units=self.insulin[on].astype(np.float64))
        if self.carbs is not None:
            on = self.carbs > 0
            kw.update(carb_times=self.times[on], carb_grams=self.carbs[on].astype(np.float64))
        return PatientSeries(times=self.times[seen], glucose=g[seen], **kw)


def _uva_padova(cohort, *, days: float, seed: int, sensor: str, start: int) -> list[PatientTrace]:  # noqa: ANN001
    from sim.cohort import simulate

    traces = simulate(cohort, days=days, seed=seed, sensor=sensor,
                      start=datetime.fromtimestamp(start, UTC).replace(tzinfo=None))
    times = start + traces.minutes.astype(np.int64) * 60
    return [PatientTrace(name, group, times, traces.bg[i], traces.cgm[i], traces.insulin[i], traces.carbs[i])
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
