"""Plain CSV (`timestamp,glucose`, optionally `patient`) to per-patient series.

Header names (case-insensitive): the time column is `timestamp` or `time`, unix seconds (an integer or
decimal) or ISO-8601 (an offset or Z is honoured; without one the time is local in `tz`). The glucose column
is `glucose` (mg/dL unless `units="mmol/L"`), `glucose_mgdl` or `glucose_mmol`; a header that says its unit
wins, and a `units=` that contradicts it is refused. An optional `patient` column splits the file into
patients; optional `insulin` (units delivered at that time) and `carbs` (grams announced) columns are events, and
a row may then leave glucose empty. So the hospital node's `patient,time,glucose,insulin,carbs` files import as
they are.
"""

from __future__ import annotations

import re
from pathlib import Path
from zoneinfo import ZoneInfo

from sim.importers.errors import CGMImportError, MissingColumnError, RowError
from sim.importers.model import MGDL_PER_MMOL, CGMExport, Collector, Errors, parse_iso
from sim.importers.textio import csv_rows, first_lines, sniff_delimiter

TIME_NAMES = ("timestamp", "time")
GLUCOSE_NAMES = {"glucose": None, "glucose_mgdl": "mg/dL", "glucose_mmol": "mmol/L"}
UNITS = ("mg/dL", "mmol/L")
_UNIX = re.compile(r"^\d+(\.\d+)?$")


def is_plain_header(line: str) -> bool:
    names = {c.strip().lower() for c in re.split(r"[,;\t]", line)}
    return bool(names & set(TIME_NAMES)) and bool(names & set(GLUCOSE_NAMES))


def parse_plain_csv(path: Path, text: str, *, patient: str, tz: ZoneInfo, errors: Errors,
                    units: str | None = None) -> CGMExport:
    if units is not None and units not in UNITS:
        raise CGMImportError(path, f"units must be 'mg/dL' or 'mmol/L', got {units!r}")
    delim = sniff_delimiter(first_lines(text, 1)[0])
    rows = csv_rows(text, delim)
    header_line, header = next(rows)
    names = [h.lower() for h in header]
    t_name = next((n for n in TIME_NAMES if n in names), None)
    g_name = next((n for n in GLUCOSE_NAMES if n in names), None)
    if t_name is None or g_name is None:
        want = "timestamp (or time)" if t_name is None else "glucose, glucose_mgdl or glucose_mmol"
        raise MissingColumnError(path, f"header {header} lacks {want}", line=header_line,
                                 field=want.split(" ")[0].rstrip(","))
    header_units = GLUCOSE_NAMES[g_name]
    if header_units and units and header_units != units:
        raise CGMImportError(path, f"column {g_name} is {header_units} but units={units!r} was given",
                             line=header_line, field=g_name)
    file_units = header_units or units or "mg/dL"
    t_i, g_i = names.index(t_name), names.index(g_name)
    p_i = names.index("patient") if "patient" in names else None
    amounts = [(kind, names.index(kind)) for kind in ("insulin", "carbs") if kind in names]
    col = Collector(path, "csv", errors, tz)
    for line, cells in rows:
        col.rows_read += 1
        cells += [""] * (len(header) - len(cells))
        try:
            raw_t, raw_g = cells[t_i], cells[g_i]
            try:
                t, naive = (int(round(float(raw_t))), False) if _UNIX.match(raw_t) else parse_iso(raw_t, tz)
                col.local_times += naive
            except ValueError as exc:
                raise RowError(path, f"{raw_t!r} is neither unix seconds nor ISO-8601", line=line,
                               field=t_name) from exc
            who = patient
            if p_i is not None:
                who = cells[p_i]
                if not who:
                    raise RowError(path, "empty patient id", line=line, field="patient")
            events = [(kind, cells[i]) for kind, i in amounts if cells[i]]
            for kind, raw in events:
                try:
                    amount = float(raw)
                except ValueError as exc:
                    raise RowError(path, f"{raw!r} is not a number", line=line, field=kind) from exc
                col.event(who, t, kind, amount, line=line, time_field=t_name, field=kind)
            if not raw_g and events:
                continue  # an insulin or carbs row
            try:
                value = float(raw_g)
            except ValueError as exc:
                what = "a row without glucose, insulin or carbs" if not raw_g else f"{raw_g!r} is not a number"
                raise RowError(path, what, line=line, field=g_name) from exc
            col.add(who, t, value * MGDL_PER_MMOL if file_units == "mmol/L" else value, line=line,
                    time_field=t_name, glucose_field=g_name)
        except RowError as exc:
            col.bad(exc)
    return col.finish(file_units)
