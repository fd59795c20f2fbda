"""``generate_cohort``: build a cohort, simulate it in batches, write Parquet traces, show progress."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from federation.errors import ConfigError

from .resample import make_cohort
from .sensors import get_sensor
from .simulate import DEFAULT_START, simulate


@contextlib.contextmanager
def _progress(total: int, enabled: bool, label: str) -> Iterator[Callable[[int], None]]:
    """A callable that advances a progress bar (rich, else tqdm, else nothing) by patient-minutes."""
    if enabled:
        try:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        except ImportError:
            pass
        else:
            columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                       TimeElapsedColumn(), TimeRemainingColumn())
            with Progress(*columns, transient=False) as bar:
                task = bar.add_task(label, total=total)
                yield lambda n: bar.advance(task, n)
            return
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            with tqdm(total=total, desc=label, unit="patient-min", unit_scale=True) as bar:
                yield bar.update
            return
    yield lambda n: None


def generate_cohort(
    *,
    patients: int,
    days: float,
    seed: int,
    out: Path,
    sensor: str = "dexcom-g7",
    progress: bool = True,
    noise: bool = True,
    start: datetime = DEFAULT_START,
    batch_size: int = 512,
) -> Path:
    """Simulate ``patients`` subjects for ``days`` and write their traces under ``out``; returns ``out``.

    Subjects: the 30 published ones first (child, adolescent, adult interleaved), then resampled ones (see
    ``resample``). Each subject's trace depends only on ``seed`` and its index, not on ``batch_size``.
    """
    if isinstance(patients, bool) or not isinstance(patients, int) or patients < 1:
        raise ConfigError(f"patients must be a positive integer, got {patients!r}")
    if isinstance(days, bool) or not isinstance(days, int | float) or not math.isfinite(days) or days <= 0:
        raise ConfigError(f"days must be a positive number, got {days!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out must be a directory, {out} is a file")
    profile = get_sensor(sensor)
    from .io import write_patients, write_sidecar  # pyarrow only when writing

    cohort = make_cohort(patients, seed)
    out.mkdir(parents=True, exist_ok=True)
    minutes = int(round(days * 1440)) // profile.interval_min * profile.interval_min
    files: list[str] = []
    metadata: dict[str, object] = {}
    with _progress(patients * minutes, progress, f"cohort {patients} x {days:g} d") as advance:
        for first in range(0, patients, batch_size):
            part = cohort.take(range(first, min(first + batch_size, patients)))
            width = len(part)
            traces = simulate(part, days=days, seed=seed, sensor=profile, noise=noise, start=start,
                              stream_offset=first, progress=lambda m, w=width: advance(m * w))
            files += write_patients(traces, part, out, first_index=first)
            metadata = {k: v for k, v in traces.metadata.items() if k != "stream_offset"}
    metadata["patients"] = patients
    write_sidecar(out, metadata, files, cohort)
    return out
