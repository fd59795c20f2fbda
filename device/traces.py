"""Glucose traces a device replays from a file (written by `sim` from the cohort simulator or a real export).

The file is NumPy `.npz` (no extra dependency on a Pi): `device_ids` (n,), `offsets_s` (T,) seconds after
the simulated start, and `cgm` (n, T) mg/dL with NaN where the sensor gave no reading.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from device.errors import DeviceError


@lru_cache(maxsize=4)
def _load(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as f:
            ids, offsets, cgm = f["device_ids"], f["offsets_s"].astype(np.int64), f["cgm"].astype(np.float64)
    except (OSError, KeyError, ValueError) as exc:
        raise DeviceError(f"trace file {path}: {exc}") from exc
    if cgm.shape != (len(ids), len(offsets)):
        raise DeviceError(f"trace file {path}: cgm has shape {cgm.shape}, expected ({len(ids)}, {len(offsets)})")
    return {str(d): (offsets, cgm[i]) for i, d in enumerate(ids)}


def load_trace(path: Path, device_id: str, *, start: int, days: float) -> tuple[np.ndarray, np.ndarray]:
    """(times, cgm) of one device from `start`, readings only (gaps dropped), at most `days` long."""
    traces = _load(str(path))
    if device_id not in traces:
        raise DeviceError(f"trace file {path} has no trace for {device_id}")
    offsets, cgm = traces[device_id]
    keep = ~np.isnan(cgm) & (offsets < days * 86400)
    return start + offsets[keep], cgm[keep]


def write_traces(path: Path, device_ids: list[str], offsets_s: np.ndarray, cgm: np.ndarray) -> None:
    np.savez_compressed(path, device_ids=np.asarray(device_ids), offsets_s=np.asarray(offsets_s, dtype=np.int64),
                        cgm=np.asarray(cgm, dtype=np.float32))
