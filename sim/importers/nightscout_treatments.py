"""Nightscout treatments export (JSON array, as from GET /api/v1/treatments.json) to insulin and carb events.

Format, from the Nightscout API's OpenAPI description (nightscout/cgm-remote-monitor, lib/server/swagger.yaml,
schema `Treatment`) and the careportal's event types (lib/plugins/careportal.js): `eventType` ("Meal Bolus",
"Correction Bolus", "Snack Bolus", "Carb Correction", "Combo Bolus", "Temp Basal", "Note", ...), `created_at`
an ISO-8601 date (else `timestamp`, ISO or epoch ms, else `date`/`mills`, epoch ms), `insulin` units, `carbs`
grams. Any treatment with `insulin` is a bolus and with `carbs` a carb event at its time, whatever its type.
A "Temp Basal" delivers `absolute` (or `rate`) U/h for `duration` minutes, ended early by the next temp basal:
it becomes an insulin event every 5 minutes of what it delivers (the trace step of a 5-minute CGM). A temp basal
given only as `percent` needs the profile and is skipped and counted; so is a zero rate (a suspension: no
insulin). The scheduled basal lives in the profile, not in treatments, and is not imported: a site whose loop
uploads its basal as temp basals (Loop, AndroidAPS) has it, others do not, and the notes say so. A "Combo Bolus"
`relative` U/h over `duration` minutes is its extended part, spread the same way.
"""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

from sim.importers.errors import RowError
from sim.importers.model import Collector, parse_iso

STEP_S = 300  # basal spread in 5-minute events
MAX_RATE_U_PER_H = 35.0  # the highest basal rate an insulin pump offers (MiniMed 780G user guide: 0-35 U/h)
MAX_DURATION_MIN = 24 * 60


def is_treatments(doc: list) -> bool:
    """A treatments array: its objects carry `eventType` (entries carry `type`/`sgv`)."""
    return any(isinstance(e, dict) and "eventType" in e for e in doc[:50])


def number(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("boolean")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return float(value.strip())
    raise ValueError(type(value).__name__)


def _time(entry: dict, path: Path, k: int, tz: ZoneInfo) -> tuple[int, str]:
    for key in ("created_at", "timestamp", "date", "mills"):
        value = entry.get(key)
        if value is None or value == "":
            continue
        try:
            if isinstance(value, str) and not value.strip().isdigit():
                return parse_iso(value, tz)[0], key
            return int(number(value) // 1000), key
        except ValueError as exc:
            raise RowError(path, f"{key} {value!r} is neither ISO-8601 nor epoch milliseconds", entry=k,
                           field=key) from exc
    raise RowError(path, "treatment has none of created_at, timestamp, date, mills", entry=k, field="created_at")


def _amount(entry: dict, key: str, path: Path, k: int) -> float | None:
    if entry.get(key) in (None, ""):
        return None
    try:
        return number(entry[key])
    except ValueError as exc:
        raise RowError(path, f"{key} {entry[key]!r} is not a number", entry=k, field=key) from exc


def _spread(col: Collector, patient: str, start: int, end: int, rate: float, *, k: int, field: str) -> None:
    """Insulin delivered at `rate` U/h over [start, end) as one event per 5-minute step."""
    for s in range(start, end, STEP_S):
        col.event(patient, s, "insulin", rate * min(STEP_S, end - s) / 3600, entry=k, time_field="created_at",
                  field=field)


def _extended(col: Collector, entry: dict, path: Path, k: int, rate_key: str) -> tuple[float, int] | None:
    rate, minutes = _amount(entry, rate_key, path, k), _amount(entry, "duration", path, k)
    if rate is None:
        return None
    if not 0 <= rate <= MAX_RATE_U_PER_H:
        raise RowError(path, f"{rate_key} {rate:g} U/h is outside 0-{MAX_RATE_U_PER_H:g}", entry=k, field=rate_key)
    if minutes is None or not 0 < minutes <= MAX_DURATION_MIN:
        raise RowError(path, f"duration {minutes} min is not in (0, {MAX_DURATION_MIN}]", entry=k, field="duration")
    return rate, int(minutes * 60)


def parse_treatments(path: Path, doc: list, col: Collector, *, patient: str, tz: ZoneInfo) -> None:
    """Add every treatment's insulin and carbs to `col` (temp basals after all are read: each ends the one
    before)."""
    basals: list[tuple[int, float, int, int, str]] = []  # (start, U/h, seconds, entry, field)
    for k, entry in enumerate(doc):
        col.rows_read += 1
        if not isinstance(entry, dict):
            col.bad(RowError(path, f"entry is a {type(entry).__name__}, not an object", entry=k, field="entry"))
            continue
        kind = entry.get("eventType")
        try:
            t, time_key = _time(entry, path, k, tz)
            found = False
            for key, what in (("insulin", "insulin"), ("carbs", "carbs")):
                amount = _amount(entry, key, path, k)
                if amount is not None:
                    col.event(patient, t, what, amount, entry=k, time_field=time_key, field=key)
                    found = True
            if kind in ("Temp Basal", "Combo Bolus"):
                rate_key = "relative" if kind == "Combo Bolus" else "absolute" if "absolute" in entry else "rate"
                ext = _extended(col, entry, path, k, rate_key)
                if ext is not None:
                    basals.append((t, ext[0], ext[1], k, rate_key))
                    found = True
                elif kind == "Temp Basal" and entry.get("percent") is not None:
                    col.skip("Temp Basal given only as percent (needs the profile)")
                    continue
            if not found:
                col.skip(f"eventType {kind or '(none)'} without insulin or carbs")
        except RowError as exc:
            col.bad(exc)
    basals.sort()
    seen = set()
    temp = [b for b in basals if b[4] != "relative"]
    for start, rate, seconds, k, field in basals:
        if (start, rate, seconds, field) in seen:
            col.dropped[f"duplicate {'Combo Bolus' if field == 'relative' else 'Temp Basal'}"] += 1
            continue
        seen.add((start, rate, seconds, field))
        end = start + seconds
        if field != "relative":  # the next temp basal ends this one
            end = min([end] + [b[0] for b in temp if b[0] > start])
        if rate == 0:
            col.skip("Temp Basal of 0 U/h (suspended: no insulin)")
            continue
        try:
            _spread(col, patient, start, end, rate, k=k, field=field)
        except RowError as exc:
            col.bad(exc)
    col.notes.append("basal: only temp basals in treatments are imported (the scheduled basal is in the "
                     "Nightscout profile)")
