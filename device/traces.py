"""Traces a device replays from a file (written by `sim` from the cohort simulator or a real export).

The file is NumPy `.npz` (no extra dependency on a Pi): `device_ids` (n,), `offsets_s` (T,) seconds after the
simulated start, `cgm` (n, T) mg/dL with NaN where the sensor gave no reading, and optionally `insulin` (n, T)
units delivered and `carbs` (n, T) grams announced in each step (what a hub knows besides glucose; the UVA/Padova
cohort simulates both). A file without them means the devices know no insulin or carbs.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from device.errors import DeviceError


@lru_cache(maxsize=4)
def _load(path: str, _version: tuple[int, int]
          ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """Every device's arrays; cached per (path, mtime, size), so a rewritten file is read afresh."""
    try:
        with np.load(path, allow_pickle=False) as f:
            ids, offsets, cgm = f["device_ids"], f["offsets_s"].astype(np.int64), f["cgm"].astype(np.float64)
            insulin = f["insulin"].astype(np.float64) if "insulin" in f.files else None
            carbs = f["carbs"].astype(np.float64) if "carbs" in f.files else None
    except (OSError, KeyError, ValueError) as exc:
        raise DeviceError(f"trace file {path}: {exc}") from exc
    shape = (len(ids), len(offsets))
    for name, a in (("cgm", cgm), ("insulin", insulin), ("carbs", carbs)):
        if a is not None and a.shape != shape:
            raise DeviceError(f"trace file {path}: {name} has shape {a.shape}, expected {shape}")
    if (insulin is None) != (carbs is None):
        raise DeviceError(f"trace file {path}: insulin and carbs come together or not at all")
    if insulin is not None and (np.nanmin(insulin, initial=0) < 0 or np.nanmin(carbs, initial=0) < 0):
        raise DeviceError(f"trace file {path}: negative insulin or carbs")
    return {str(d): (offsets, cgm[i], None if insulin is None else insulin[i], None if carbs is None else carbs[i])
            for i, d in enumerate(ids)}


def _device(path: Path, device_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    try:
        st = Path(path).stat()
    except OSError as exc:
        raise DeviceError(f"trace file {path}: {exc.strerror or exc}") from exc
    traces = _load(str(path), (st.st_mtime_ns, st.st_size))
    if device_id not in traces:
        raise DeviceError(f"trace file {path} has no trace for {device_id}")
    return traces[device_id]


def load_trace(path: Path, device_id: str, *, start: int, days: float) -> tuple[np.ndarray, np.ndarray]:
    """(times, cgm) of one device from `start`, readings only (gaps dropped), at most `days` long."""
    offsets, cgm, _ins, _carbs = _device(path, device_id)
    keep = ~np.isnan(cgm) & (offsets < days * 86400)
    return start + offsets[keep], cgm[keep]


def load_treatments(path: Path, device_id: str, *, start: int,
                    days: float) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(times, insulin units, carb grams) per step of one device from `start`, at most `days`; None if unknown."""
    offsets, _cgm, insulin, carbs = _device(path, device_id)
    if insulin is None:
        return None
    keep = offsets < days * 86400
    return start + offsets[keep], np.nan_to_num(insulin[keep]), np.nan_to_num(carbs[keep])


def write_traces(path: Path, device_ids: list[str], offsets_s: np.ndarray, cgm: np.ndarray, *,
                 insulin: np.ndarray | None = None, carbs: np.ndarray | None = None) -> None:
    extra = {}
    if insulin is not None or carbs is not None:
        if insulin is None or carbs is None:
            raise DeviceError("write_traces: give insulin and carbs together")
        extra = {"insulin": np.asarray(insulin, dtype=np.float32), "carbs": np.asarray(carbs, dtype=np.float32)}
    np.savez_compressed(path, device_ids=np.asarray(device_ids), offsets_s=np.asarray(offsets_s, dtype=np.int64),
                        cgm=np.asarray(cgm, dtype=np.float32), **extra)
