"""The common form every importer produces, and the checks, sorting and de-duplication they share.

Units: 1 mmol/L of glucose = 18.0182 mg/dL (molar mass of glucose 180.182 g/mol / 10; the factor the HL7
CGM implementation guide and ISO 15197 conversions use; the R package `ega` uses the same 18.0182).
Plausible range: every CGM we import reports 40-400 mg/dL (Dexcom) or 40-500 mg/dL (FreeStyle Libre, per
Tidepool's Abbott FreeStyle Libre checklist) and prints "Low"/"High" outside; a value outside 20-600 mg/dL is
a unit or parsing mistake (5.6 read as mg/dL, say), so it is an OutOfRangeError, never a reading.
Insulin and carbs, where an export has them, are events (unix seconds, amount): units delivered, grams announced.
One event above 100 U or 500 g (federation/limits.py, the hospital loader's bounds too) or below 0 is an
OutOfRangeError; a zero amount is no event (counted as skipped).
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

from federation.limits import CARBS_MAX_G, INSULIN_MAX_U
from sim.importers.errors import CGMImportError, EmptyExportError, OutOfRangeError, RowError

MGDL_PER_MMOL = 18.0182
MIN_MGDL, MAX_MGDL = 20.0, 600.0
LOW_MGDL, HIGH_MGDL = 40.0, 400.0  # what a "Low" / "High" text reading becomes (Dexcom's reportable range)
MIN_UNIX, MAX_UNIX = 946_684_800, 4_102_444_800  # 2000-01-01 .. 2100-01-01 UTC
EVENT_KINDS = ("insulin", "carbs")
Errors = Literal["raise", "drop", "drop-out-of-range"]
ERRORS = ("raise", "drop", "drop-out-of-range")


def _empty(dtype: type) -> np.ndarray:
    return np.empty(0, dtype=dtype)


@dataclass(frozen=True)
class PatientSeries:
    """One patient's readings, sorted by time, one per timestamp."""

    patient: str
    times: np.ndarray  # int64 unix seconds, UTC, strictly increasing
    glucose_mgdl: np.ndarray  # float64
    censored: np.ndarray  # int8: -1 the device printed "Low" (value is LOW_MGDL), +1 "High" (HIGH_MGDL), 0 a number
    devices: tuple[str, ...] = ()
    serials: tuple[str, ...] = ()
    insulin_times: np.ndarray = field(default_factory=lambda: _empty(np.int64))  # sorted unix seconds
    insulin_units: np.ndarray = field(default_factory=lambda: _empty(np.float64))  # units delivered
    carb_times: np.ndarray = field(default_factory=lambda: _empty(np.int64))
    carb_grams: np.ndarray = field(default_factory=lambda: _empty(np.float64))  # grams announced


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

    @property
    def events(self) -> dict[str, int]:
        """Insulin and carb events imported, over all patients."""
        return {"insulin": sum(len(s.insulin_times) for s in self.patients.values()),
                "carbs": sum(len(s.carb_times) for s in self.patients.values())}

    def report(self) -> dict:
        """A JSON-ready account of the import (no glucose values, no names)."""
        def span(s: PatientSeries) -> dict:
            return {"first": int(s.times[0]), "last": int(s.times[-1])} if len(s.times) else {}

        return {
            "path": str(self.path), "format": self.fmt, "source_units": self.source_units,
            "converted_to_mgdl": self.converted, "rows_read": self.rows_read, "readings": self.readings,
            "events": self.events,
            "patients": {p: {"readings": len(s.times), **span(s),
                             "low_flagged": int(np.sum(s.censored < 0)), "high_flagged": int(np.sum(s.censored > 0)),
                             "insulin_events": len(s.insulin_times), "carb_events": len(s.carb_times),
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


def dedupe_glucose(t: np.ndarray, g: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, Counter]:
    """One reading per timestamp from arrays stably sorted by time (the first of a repeat wins), and the count of
    repeats dropped, by whether their value agreed with the one kept."""
    dropped: Counter = Counter()
    dup = np.zeros(len(t), dtype=bool)
    dup[1:] = t[1:] == t[:-1]
    if dup.any():
        kept = np.maximum.accumulate(np.where(~dup, np.arange(len(t)), 0))  # the reading kept for each timestamp
        same = dup & (g == g[kept])
        dropped["duplicate timestamp, same value"] += int(same.sum())
        dropped["duplicate timestamp, different value (first in file kept)"] += int((dup & ~same).sum())
    return t[~dup], g[~dup], c[~dup], +dropped


def dedupe_events(t: np.ndarray, a: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, Counter]:
    """Events sorted by time with exact repeats (same time, same amount: a double upload) dropped and counted;
    two different amounts at one time are both kept (a meal and a correction bolus)."""
    order = np.lexsort((a, t))
    t, a = t[order], a[order]
    dup = np.zeros(len(t), dtype=bool)
    dup[1:] = (t[1:] == t[:-1]) & (a[1:] == a[:-1])
    dropped = Counter({f"duplicate {kind} event": int(dup.sum())})
    return t[~dup], a[~dup], +dropped


@dataclass
class Collector:
    """Accumulates readings and events of one import; applies the range checks and the errors= policy."""

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
    _events: dict[str, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)
    _devices: dict[str, set[str]] = field(default_factory=dict)
    _serials: dict[str, set[str]] = field(default_factory=dict)
    _first_bad: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.errors not in ERRORS:
            raise ValueError(f"errors must be one of {', '.join(ERRORS)}, got {self.errors!r}")

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def bad(self, exc: RowError) -> None:
        """A bad row: raise it, or count it and keep the first few messages as notes (errors="drop"; with
        "drop-out-of-range" only values outside the plausible range are counted, malformed rows still raise)."""
        if self.errors == "raise" or (self.errors == "drop-out-of-range" and not isinstance(exc, OutOfRangeError)):
            raise exc
        what = "out-of-range" if isinstance(exc, OutOfRangeError) else "invalid"
        self.dropped[f"{what} {exc.field}"] += 1
        if len(self._first_bad) < 5:
            self._first_bad.append(str(exc))

    def _check_time(self, t: int, line: int | None, entry: int | None, time_field: str) -> None:
        if not MIN_UNIX <= t < MAX_UNIX:
            hint = " (milliseconds where seconds are expected?)" if t >= MAX_UNIX * 100 else ""
            raise RowError(self.path, f"timestamp {t} is outside 2000-2100{hint}", line=line, entry=entry,
                           field=time_field)

    def add(self, patient: str, t: int, mgdl: float, *, censored: int = 0, line: int | None = None,
            entry: int | None = None, time_field: str = "time", glucose_field: str = "glucose",
            device: str | None = None, serial: str | None = None) -> None:
        self._check_time(t, line, entry, time_field)
        if not np.isfinite(mgdl) or not MIN_MGDL <= mgdl <= MAX_MGDL:
            hint = ""
            if np.isfinite(mgdl) and MIN_MGDL <= mgdl * MGDL_PER_MMOL <= MAX_MGDL:
                hint = " (a mmol/L value read as mg/dL? pass units='mmol/L')"
            raise OutOfRangeError(self.path, f"glucose {mgdl:g} mg/dL is outside {MIN_MGDL:g}-{MAX_MGDL:g}{hint}",
                                  line=line, entry=entry, field=glucose_field)
        order = line if line is not None else (entry or 0)
        self._rows.setdefault(patient, []).append((t, float(mgdl), censored, order))
        if device:
            self._devices.setdefault(patient, set()).add(device)
        if serial:
            self._serials.setdefault(patient, set()).add(serial)

    def event(self, patient: str, t: int, kind: str, amount: float, *, line: int | None = None,
              entry: int | None = None, time_field: str = "time", field: str = "amount") -> None:
        """An insulin (units) or carbs (grams) event; a zero amount is counted as skipped, not kept."""
        self._check_time(t, line, entry, time_field)
        hi = INSULIN_MAX_U if kind == "insulin" else CARBS_MAX_G
        if not np.isfinite(amount) or not 0.0 <= amount <= hi:
            unit = "U" if kind == "insulin" else "g"
            raise OutOfRangeError(self.path, f"{kind} {amount:g} {unit} is outside 0-{hi:g} {unit} for one event",
                                  line=line, entry=entry, field=field)
        if amount == 0:
            self.skip(f"{kind} event of 0")
            return
        self._events.setdefault(patient, {}).setdefault(kind, []).append((t, float(amount)))

    def finish(self, source_units: str, *, glucose_required: bool = True) -> CGMExport:
        if not self._rows and (glucose_required or not self._events):
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
            bad = f"; {sum(self.dropped.values())} invalid rows dropped" if self.dropped else ""
            what = "glucose readings" if glucose_required else "glucose readings, insulin or carbs"
            raise EmptyExportError(self.path, f"no {what} ({self.rows_read} rows read; skipped {reasons}{bad})")
        patients = {}
        for patient in sorted(set(self._rows) | set(self._events)):
            rows = sorted(self._rows.get(patient, []), key=lambda r: (r[0], r[3]))  # time, then file order
            t, g, c, dropped = dedupe_glucose(np.array([r[0] for r in rows], dtype=np.int64),
                                              np.array([r[1] for r in rows], dtype=np.float64),
                                              np.array([r[2] for r in rows], dtype=np.int8))
            self.dropped.update(dropped)
            ev = {}
            for kind in EVENT_KINDS:
                pairs = self._events.get(patient, {}).get(kind, [])
                et, ea, dropped = dedupe_events(np.array([p[0] for p in pairs], dtype=np.int64),
                                                np.array([p[1] for p in pairs], dtype=np.float64), kind)
                self.dropped.update(dropped)
                ev[kind] = (et, ea)
            patients[patient] = PatientSeries(
                patient=patient, times=t, glucose_mgdl=g, censored=c,
                devices=tuple(sorted(self._devices.get(patient, ()))),
                serials=tuple(sorted(self._serials.get(patient, ()))),
                insulin_times=ev["insulin"][0], insulin_units=ev["insulin"][1],
                carb_times=ev["carbs"][0], carb_grams=ev["carbs"][1])
        notes = list(self.notes) + [f"dropped: {m}" for m in self._first_bad]
        if self.local_times:
            zone_name = str(self.tz or "UTC")
            hint = " (pass tz= for the device's local zone)" if zone_name == "UTC" else ""
            notes.append(f"{self.local_times} timestamps without an offset read as local time in {zone_name}{hint}")
        return CGMExport(path=self.path, fmt=self.fmt, source_units=source_units, patients=patients,
                         rows_read=self.rows_read, skipped=dict(self.skipped),
                         dropped={k: v for k, v in self.dropped.items() if v}, notes=tuple(notes))
