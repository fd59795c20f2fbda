"""The common form every importer produces, and the checks, sorting and de-duplication they share.

Units: 1 mmol/L of glucose = 18.0182 mg/dL (molar mass of glucose 180.182 g/mol / 10; the factor the HL7
CGM implementation guide and ISO 15197 conversions use; the R package `ega` uses the same 18.0182).
Plausible range: every CGM we import reports 40-400 mg/dL (Dexcom) or 40-500 mg/dL (FreeStyle Libre, per
Tidepool's Abbott FreeStyle Libre checklist) and prints "Low"/"High" outside; a value outside 20-600 mg/dL is
a unit or parsing mistake (5.6 read as mg/dL, say), so it is a RowError, never a reading.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from sim.importers.errors import CGMImportError, EmptyExportError, RowError

MGDL_PER_MMOL = 18.0182
MIN_MGDL, MAX_MGDL = 20.0, 600.0
LOW_MGDL, HIGH_MGDL = 40.0, 400.0  # what a "Low" / "High" text reading becomes (Dexcom's reportable range)
MIN_UNIX, MAX_UNIX = 946_684_800, 4_102_444_800  # 2000-01-01 .. 2100-01-01 UTC
Errors = Literal["raise", "drop"]


@dataclass(frozen=True)
class PatientSeries:
    """One patient's readings, sorted by time, one per timestamp."""

    patient: str
    times: np.ndarray  # int64 unix seconds, UTC, strictly increasing
    glucose_mgdl: np.ndarray  # float64
    censored: np.ndarray  # int8: -1 the device printed "Low" (value is LOW_MGDL), +1 "High" (HIGH_MGDL), 0 a number
    devices: tuple[str, ...] = ()
    serials: tuple[str, ...] = ()


@dataclass(frozen=True)
class CGMExport:
    """An imported export: per-patient series plus an account of every row that did not become a reading."""

    path: Path
    fmt: str  # "nightscout" | "clarity" | "libreview" | "csv"
    source_units: str  # units in the file: "mg/dL" or "mmol/L"; series are always mg/dL
    patients: dict[str, PatientSeries]
    rows_read: int
    skipped: dict[str, int]  # rows that are not sensor readings (events, calibrations, scans...), by reason
    dropped: dict[str, int]  # sensor readings set aside (duplicates, bad rows with errors="drop"), by reason
    notes: tuple[str, ...] = ()

    @property
    def converted(self) -> bool:
        return self.source_units != "mg/dL"

    @property
    def readings(self) -> int:
        return sum(len(s.times) for s in self.patients.values())

    def report(self) -> dict:
        """A JSON-ready account of the import (no glucose values, no names)."""
        return {
            "path": str(self.path), "format": self.fmt, "source_units": self.source_units,
            "converted_to_mgdl": self.converted, "rows_read": self.rows_read, "readings": self.readings,
            "patients": {p: {"readings": len(s.times), "first": int(s.times[0]), "last": int(s.times[-1]),
                             "low_flagged": int(np.sum(s.censored < 0)), "high_flagged": int(np.sum(s.censored > 0)),
                             "devices": list(s.devices), "serials": list(s.serials)}
                         for p, s in self.patients.items()},
            "skipped": dict(self.skipped), "dropped": dict(self.dropped), "notes": list(self.notes),
        }


def zone(tz: str | None, path: Path) -> ZoneInfo:
    try:
        return ZoneInfo(tz or "UTC")
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CGMImportError(path, f"unknown time zone {tz!r} (use an IANA name such as Europe/Berlin)") from exc


_ISO_LOOSE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?$")


def parse_iso(text: str, tz: ZoneInfo) -> tuple[int, bool]:
    """ISO-8601 to (unix seconds, had no offset); without an offset the time is local in `tz`. ValueError if bad."""
    text = text.strip()
    m = _ISO_LOOSE.match(text)
    if m:  # also takes Clarity's single-digit hours ("2025-05-01 0:01:47")
        y, mo, d, h, mi, s = (int(g) if g else 0 for g in m.groups())
        return int(datetime(y, mo, d, h, mi, s, tzinfo=tz).timestamp()), True
    dt = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    naive = dt.tzinfo is None
    return int((dt.replace(tzinfo=tz) if naive else dt).timestamp()), naive


@dataclass
class Collector:
    """Accumulates readings of one import; applies the range checks and the errors= policy."""

    path: Path
    fmt: str
    errors: Errors = "raise"
    tz: ZoneInfo | None = None
    rows_read: int = 0
    local_times: int = 0  # timestamps read without an offset, as local time in tz
    skipped: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    _rows: dict[str, list[tuple[int, float, int, int]]] = field(default_factory=dict)
    _devices: dict[str, set[str]] = field(default_factory=dict)
    _serials: dict[str, set[str]] = field(default_factory=dict)
    _first_bad: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.errors not in ("raise", "drop"):
            raise ValueError(f"errors must be 'raise' or 'drop', got {self.errors!r}")

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def bad(self, exc: RowError) -> None:
        """A bad row: raise it, or (errors="drop") count it and keep the first few messages as notes."""
        if self.errors == "raise":
            raise exc
        self.dropped[f"invalid {exc.field}"] += 1
        if len(self._first_bad) < 5:
            self._first_bad.append(str(exc))

    def add(self, patient: str, t: int, mgdl: float, *, censored: int = 0, line: int | None = None,
            entry: int | None = None, time_field: str = "time", glucose_field: str = "glucose",
            device: str | None = None, serial: str | None = None) -> None:
        if not MIN_UNIX <= t < MAX_UNIX:
            hint = " (milliseconds where seconds are expected?)" if t >= MAX_UNIX * 100 else ""
            raise RowError(self.path, f"timestamp {t} is outside 2000-2100{hint}", line=line, entry=entry,
                           field=time_field)
        if not np.isfinite(mgdl) or not MIN_MGDL <= mgdl <= MAX_MGDL:
            hint = ""
            if np.isfinite(mgdl) and MIN_MGDL <= mgdl * MGDL_PER_MMOL <= MAX_MGDL:
                hint = " (a mmol/L value read as mg/dL? pass units='mmol/L')"
            raise RowError(self.path, f"glucose {mgdl:g} mg/dL is outside {MIN_MGDL:g}-{MAX_MGDL:g}{hint}",
                           line=line, entry=entry, field=glucose_field)
        order = line if line is not None else (entry or 0)
        self._rows.setdefault(patient, []).append((t, float(mgdl), censored, order))
        if device:
            self._devices.setdefault(patient, set()).add(device)
        if serial:
            self._serials.setdefault(patient, set()).add(serial)

    def finish(self, source_units: str) -> CGMExport:
        if not self._rows:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
            bad = f"; {sum(self.dropped.values())} invalid rows dropped" if self.dropped else ""
            raise EmptyExportError(self.path, f"no glucose readings ({self.rows_read} rows read; "
                                              f"skipped {reasons}{bad})")
        patients = {}
        for patient, rows in sorted(self._rows.items()):
            rows.sort(key=lambda r: (r[0], r[3]))  # by time, then file order: the first of a duplicate wins
            t = np.array([r[0] for r in rows], dtype=np.int64)
            g = np.array([r[1] for r in rows], dtype=np.float64)
            c = np.array([r[2] for r in rows], dtype=np.int8)
            dup = np.zeros(len(t), dtype=bool)
            dup[1:] = t[1:] == t[:-1]
            if dup.any():
                # compare each duplicate with the reading kept for its timestamp
                kept = np.maximum.accumulate(np.where(~dup, np.arange(len(t)), 0))
                same = dup & (g == g[kept])
                self.dropped["duplicate timestamp, same value"] += int(same.sum())
                self.dropped["duplicate timestamp, different value (first in file kept)"] += int((dup & ~same).sum())
            patients[patient] = PatientSeries(
                patient=patient, times=t[~dup], glucose_mgdl=g[~dup], censored=c[~dup],
                devices=tuple(sorted(self._devices.get(patient, ()))),
                serials=tuple(sorted(self._serials.get(patient, ()))))
        notes = list(self.notes) + [f"dropped: {m}" for m in self._first_bad]
        if self.local_times:
            zone_name = str(self.tz or "UTC")
            hint = " (pass tz= for the device's local zone)" if zone_name == "UTC" else ""
            notes.append(f"{self.local_times} timestamps without an offset read as local time in {zone_name}{hint}")
        return CGMExport(path=self.path, fmt=self.fmt, source_units=source_units, patients=patients,
                         rows_read=self.rows_read, skipped=dict(self.skipped),
                         dropped={k: v for k, v in self.dropped.items() if v}, notes=tuple(notes))
