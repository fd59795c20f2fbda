"""Nightscout entries export (JSON array, as from GET /api/v1/entries.json) to per-patient series.

Format, from the Nightscout API's OpenAPI description (nightscout/cgm-remote-monitor, lib/server/swagger.yaml,
schema `Entry`): `type` is "sgv", "mbg", "cal", etc.; `date` is the epoch in milliseconds; `dateString` an
ISO-8601 date; `sgv` "the glucose reading (only available for sgv types)", stored in mg/dL whatever the
site's display units; `device` names the uploader (e.g. "xDrip-DexcomG6"). Sample entries in that shape:
LoopKit/Loop issue #542. Only `sgv` entries are readings; mbg (meter) and cal (calibration) entries are
skipped and counted. sgv values below 39 are not glucose but Dexcom status codes (1 SENSOR_NOT_ACTIVE,
3 NO_ANTENNA, 5 SENSOR_NOT_CALIBRATED, 9 ABSOLUTE_DEVIATION, 12 BAD_RF, ...; cgm-remote-monitor
lib/plugins/errorcodes.js): skipped and counted. A Nightscout site is one person: one patient per file.
A treatments export (objects with `eventType`) is read by `nightscout_treatments` into insulin and carb events.
"""

from __future__ import annotations

import json
from pathlib import Path
from zoneinfo import ZoneInfo

from sim.importers.errors import CGMImportError, RowError, UnknownFormatError
from sim.importers.model import CGMExport, Collector, Errors, parse_iso
from sim.importers.nightscout_treatments import is_treatments, parse_treatments
from sim.importers.nightscout_treatments import number as _number

DEXCOM_STATUS_CODE_BELOW = 39


def _time(entry: dict, path: Path, k: int, tz: ZoneInfo) -> tuple[int, str]:
    if entry.get("date") is not None:
        try:
            ms = _number(entry["date"])
        except ValueError as exc:
            raise RowError(path, f"date {entry['date']!r} is not a number of milliseconds", entry=k,
                           field="date") from exc
        return int(ms // 1000), "date"
    for key in ("dateString", "sysTime"):
        if entry.get(key):
            try:
                return parse_iso(str(entry[key]), tz)[0], key
            except ValueError as exc:
                raise RowError(path, f"{key} {entry[key]!r} is not an ISO-8601 date", entry=k, field=key) from exc
    raise RowError(path, "sgv entry has neither date nor dateString", entry=k, field="date")


def parse_nightscout(path: Path, text: str, *, patient: str, tz: ZoneInfo, errors: Errors) -> CGMExport:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CGMImportError(path, f"invalid JSON: {exc.msg}", line=exc.lineno, field="json") from exc
    if not isinstance(doc, list):
        raise UnknownFormatError(path, f"a Nightscout entries export is a JSON array, found a {type(doc).__name__}")
    col = Collector(path, "nightscout", errors, tz)
    if is_treatments(doc):
        parse_treatments(path, doc, col, patient=patient, tz=tz)
        return col.finish("mg/dL", glucose_required=False)
    for k, entry in enumerate(doc):
        col.rows_read += 1
        if not isinstance(entry, dict):
            col.bad(RowError(path, f"entry is a {type(entry).__name__}, not an object", entry=k, field="entry"))
            continue
        kind = entry.get("type", "sgv" if "sgv" in entry else None)
        if kind != "sgv":
            col.skip(f"type {kind}")
            continue
        try:
            if entry.get("sgv") is None:
                raise RowError(path, "sgv entry without an sgv value", entry=k, field="sgv")
            try:
                sgv = _number(entry["sgv"])
            except ValueError as exc:
                raise RowError(path, f"sgv {entry['sgv']!r} is not a number", entry=k, field="sgv") from exc
            if sgv < DEXCOM_STATUS_CODE_BELOW:
                col.skip("sgv < 39: Dexcom status code, not a reading")
                continue
            t, time_field = _time(entry, path, k, tz)
            col.add(patient, t, sgv, entry=k, time_field=time_field, glucose_field="sgv",
                    device=entry.get("device") if isinstance(entry.get("device"), str) else None)
        except RowError as exc:
            col.bad(exc)
    return col.finish("mg/dL")
