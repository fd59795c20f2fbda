"""The hospital data file: a CSV of glucose readings, insulin and carbohydrates per patient, read with every error
naming its file, line and field (`wearfed hospital check` and `hospital run`).

Columns (header line first, any order): `patient`, `time`, `glucose` (mg/dL) or `glucose_mmol` (mmol/L, converted),
then optional `insulin` (units delivered at that time), `carbs` (grams announced) and `unit` (per row: mg/dL or
mmol/L, overriding the glucose column's unit). A row may leave glucose empty when it carries only insulin or carbs.
`time` is ISO 8601 with a UTC offset (2026-01-01T08:05:00Z, 2026-01-01T09:05:00+01:00), unix seconds or unix
milliseconds; the format is detected from the first row, named, and must hold for every row. Glucose undeclared as
mmol/L whose every value is below 35 looks like mmol/L and is refused with a hint rather than read as mg/dL.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from federation.errors import SchemaError
from federation.limits import CARBS_MAX_G, INSULIN_MAX_U
from federation.series import PatientSeries
from federation.windows import as_series

log = logging.getLogger(__name__)
COLUMNS = ("patient", "time", "glucose", "insulin", "carbs")
OLD_COLUMNS = COLUMNS[:3]

GLUCOSE_MG_DL = (10.0, 1000.0)  # plausible range of one reading (ours; sensors report 40-400)
MMOL_TO_MG_DL = 18.016  # glucose molar mass 180.16 g/mol: 1 mmol/L = 18.016 mg/dL
MMOL_SUSPECT_BELOW = 35.0  # every value below this: mmol/L (a mg/dL series never stays below 35)
UNIX_SECONDS = (946_684_800, 4_102_444_800)  # 2000-01-01 .. 2100-01-01 UTC: plausible reading times
UNITS = {"mg/dl": "mg/dL", "mmol/l": "mmol/L"}
HINT = ("if these are mmol/L, name the column glucose_mmol (or add a unit column saying mmol/L) and they are "
        "converted (x 18.016)")


@dataclass(frozen=True)
class ClinicalData:
    series: dict[str, PatientSeries]
    time_format: str  # "ISO 8601", "unix seconds" or "unix milliseconds"
    unit: str  # the glucose unit read ("mg/dL", "mmol/L (converted)" or "mixed (converted)")
    rows: int


def parse_time(raw: str) -> tuple[int, str]:
    """(unix seconds, the format's name) of one time field; SchemaError names what was expected."""
    raw = raw.strip()
    try:
        v = float(raw)
    except ValueError:
        v = None
    if v is not None and math.isfinite(v):
        if UNIX_SECONDS[0] <= v < UNIX_SECONDS[1]:
            return round(v), "unix seconds"
        if UNIX_SECONDS[0] * 1000 <= v < UNIX_SECONDS[1] * 1000:
            return round(v / 1000), "unix milliseconds"
        raise SchemaError(f"time {raw!r} is a number but neither unix seconds nor unix milliseconds of a date in "
                          "2000-2099")
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise SchemaError(f"time {raw!r} is not ISO 8601 (2026-01-01T08:05:00Z), unix seconds or unix "
                          "milliseconds") from exc
    if dt.tzinfo is None:
        raise SchemaError(f"time {raw!r} is ISO 8601 without a UTC offset: add Z or +HH:MM (the local time of "
                          "which zone?)")
    return round(dt.timestamp()), "ISO 8601"


def _amount(row: dict, key: str, *, hi: float, where: str) -> float:
    raw = (row.get(key) or "").strip()
    if not raw:
        return 0.0
    try:
        v = float(raw)
    except ValueError as exc:
        raise SchemaError(f"{where}: {key} {raw!r} is not a number") from exc
    if not 0.0 <= v <= hi:
        raise SchemaError(f"{where}: {key} {v} out of range [0, {hi}]")
    return v


def _header(path: Path, fieldnames: list[str] | None) -> tuple[str, ...]:
    if not fieldnames:
        raise SchemaError(f"{path}: empty file: the first line must be the header {','.join(COLUMNS)}")
    header = tuple(f.strip() for f in fieldnames)
    glucose = [c for c in header if c in ("glucose", "glucose_mmol")]
    missing = [c for c in ("patient", "time") if c not in header] + ([] if glucose else ["glucose"])
    unknown = [c for c in header if c not in (*COLUMNS, "glucose_mmol", "unit")]
    if missing or unknown or len(glucose) > 1 or len(set(header)) != len(header):
        raise SchemaError(f"{path}:1: header must be {','.join(COLUMNS)} (glucose_mmol instead of glucose for mmol/L; "
                          f"optional unit), got {','.join(header)}"
                          + (f"; missing {','.join(missing)}" if missing else "")
                          + (f"; unknown {','.join(unknown)}" if unknown else ""))
    if "insulin" not in header and "carbs" not in header:
        log.warning("%s: header %s has no insulin or carbs columns: the model sees no insulin or carbs for these "
                    "patients (add columns insulin,carbs)", path, ",".join(header))
    return header


def _unit(row: dict, column: str, where: str) -> str:
    raw = (row.get("unit") or "").strip()
    if not raw:
        return "mmol/L" if column == "glucose_mmol" else "mg/dL"
    if raw.lower() not in UNITS:
        raise SchemaError(f"{where}: unit {raw!r} is neither mg/dL nor mmol/L")
    return UNITS[raw.lower()]


def read_clinical_csv(path: Path) -> ClinicalData:
    """Read and check a hospital data file (module docstring); SchemaError names the line and field."""
    rows: dict[str, tuple[list[int], list[float], list[int], list[float], list[int], list[float]]] = {}
    units: set[str] = set()
    n = 0
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = _header(path, reader.fieldnames)
        reader.fieldnames = list(header)
        column = "glucose_mmol" if "glucose_mmol" in header else "glucose"
        fmt: str | None = None
        for line, row in enumerate(reader, start=2):
            n += 1
            where = f"{path}:{line}"
            if None in row:
                raise SchemaError(f"{where}: more fields than the header's {len(header)}")
            patient = (row.get("patient") or "").strip()
            if not patient:
                raise SchemaError(f"{where}: patient is empty")
            try:
                t, this_fmt = parse_time(row.get("time") or "")
            except SchemaError as exc:
                raise SchemaError(f"{where}: {exc}") from exc
            if fmt is None:
                fmt = this_fmt
            elif this_fmt != fmt:
                raise SchemaError(f"{where}: time {row['time']!r} is {this_fmt}, but the first row's is {fmt}: "
                                  "one format per file")
            insulin = _amount(row, "insulin", hi=INSULIN_MAX_U, where=where)
            carbs = _amount(row, "carbs", hi=CARBS_MAX_G, where=where)
            raw_g = (row.get(column) or "").strip()
            if not raw_g and not (insulin or carbs):
                raise SchemaError(f"{where}: a row needs glucose, insulin or carbs")
            ts, gs, its, ius, cts, cgs = rows.setdefault(patient, ([], [], [], [], [], []))
            if raw_g:
                ts.append(t)
                gs.append(_glucose(raw_g, _unit(row, column, where), where, units))
            if insulin:
                its.append(t)
                ius.append(insulin)
            if carbs:
                cts.append(t)
                cgs.append(carbs)
    if n == 0:
        raise SchemaError(f"{path}: no data rows after the header (a patient,time,glucose row per reading)")
    every = [g for ts, gs, *_ in rows.values() for g in gs]
    if units == {"mg/dL"} and every and max(every) < MMOL_SUSPECT_BELOW:
        raise SchemaError(f"{path}: every glucose value is below {MMOL_SUSPECT_BELOW:g} (max {max(every):g}): "
                          f"they look like mmol/L, not mg/dL; {HINT}")
    unit = "mg/dL" if units <= {"mg/dL"} else "mmol/L (converted)" if units == {"mmol/L"} else "mixed (converted)"
    series = {p: PatientSeries(times=np.asarray(ts, dtype=np.int64), glucose=np.asarray(gs, dtype=np.float64),
                               insulin_times=np.asarray(its, dtype=np.int64), insulin_units=np.asarray(ius),
                               carb_times=np.asarray(cts, dtype=np.int64), carb_grams=np.asarray(cgs))
              for p, (ts, gs, its, ius, cts, cgs) in rows.items()}
    return ClinicalData(series, fmt or "unix seconds", unit, n)


def _glucose(raw: str, unit: str, where: str, units: set[str]) -> float:
    try:
        g = float(raw)
    except ValueError as exc:
        raise SchemaError(f"{where}: glucose {raw!r} is not a number") from exc
    units.add(unit)
    lo, hi = GLUCOSE_MG_DL
    if unit == "mmol/L":
        if not lo / MMOL_TO_MG_DL <= g <= hi / MMOL_TO_MG_DL:
            raise SchemaError(f"{where}: glucose {g} mmol/L out of range [{lo / MMOL_TO_MG_DL:.2f}, "
                              f"{hi / MMOL_TO_MG_DL:.1f}]")
        return g * MMOL_TO_MG_DL
    if not lo <= g <= hi:  # NaN fails too
        hint = f"; {HINT}" if 0 < g < MMOL_SUSPECT_BELOW else ""
        raise SchemaError(f"{where}: glucose {g} mg/dL out of range [{lo:g}, {hi:g}]{hint}")
    return g


def load_clinical_csv(path: Path) -> dict[str, PatientSeries]:
    """The patients of a hospital data file (`read_clinical_csv`)."""
    return read_clinical_csv(path).series


def write_clinical_csv(path: Path, series: dict[str, PatientSeries | tuple[np.ndarray, np.ndarray]]) -> None:
    """One row per time with a reading or an event (glucose to 0.1 mg/dL, insulin to 0.001 U, carbs to 0.1 g)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for patient, item in series.items():
            s = as_series(item)
            by_time: dict[int, list] = {}
            for t, g in zip(s.times, s.glucose, strict=True):
                by_time.setdefault(int(t), ["", 0.0, 0.0])[0] = round(float(g), 1)
            for t, u in zip(s.insulin_times, s.insulin_units, strict=True):
                by_time.setdefault(int(t), ["", 0.0, 0.0])[1] += float(u)
            for t, c in zip(s.carb_times, s.carb_grams, strict=True):
                by_time.setdefault(int(t), ["", 0.0, 0.0])[2] += float(c)
            w.writerows((patient, t, g, round(u, 3) if u else "", round(c, 1) if c else "")
                        for t, (g, u, c) in sorted(by_time.items()))
