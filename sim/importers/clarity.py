"""Dexcom Clarity CSV export to per-patient series.

Format, from the University of Michigan Depression Center's side-by-side of patient and clinic Clarity
exports (teamdynamix.umich.edu, "What are the differences between patient and provider CGM exports?",
2025) and the column lists of open Clarity readers: one header line
`Index,Timestamp (YYYY-MM-DDThh:mm:ss),Event Type,Event Subtype,Patient Info,Device Info,Source Device ID,
Glucose Value (mg/dL),Insulin Value (u),Carb Value (grams),Duration (hh:mm:ss),
Glucose Rate of Change (mg/dL/min),Transmitter Time (Long Integer),Transmitter ID`, then rows without a
timestamp for patient information (FirstName, LastName, ...), devices and alert settings, then timed events.
`Event Type` = EGV rows are sensor readings; Insulin rows (subtype Fast-Acting or Long-Acting, both read as
units delivered at that time) are insulin events from `Insulin Value (u)`, Carbs rows carb events from
`Carb Value (grams)`; Calibration, Alert, Exercise, Health... rows are skipped and counted, and
patient-information values are never read. mmol/L exports name the column
`Glucose Value (mmol/L)`. Outside the sensor's range an EGV reads "Low" or "High": imported as 40 / 400 mg/dL
and flagged in `censored`. Timestamps are the display device's local time without offset: pass `tz`.
"""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

from sim.importers.errors import MissingColumnError, RowError
from sim.importers.model import HIGH_MGDL, LOW_MGDL, MGDL_PER_MMOL, CGMExport, Collector, Errors, parse_iso
from sim.importers.textio import csv_rows, decimal, first_lines, sniff_delimiter

EVENT = "Event Type"
AMOUNTS = {"Insulin": ("insulin", "Insulin Value (u)"), "Carbs": ("carbs", "Carb Value (grams)")}


def is_clarity_header(line: str) -> bool:
    """Two of the three Clarity markers, so a file missing one column still gets a MissingColumnError."""
    return sum(m in line for m in (EVENT, "Timestamp (", "Glucose Value (")) >= 2


def _columns(path: Path, header: list[str]) -> tuple[int, int, int, str, dict[str, int]]:
    idx = {name: i for i, name in enumerate(header)}
    time_col = next((n for n in header if n.startswith("Timestamp")), None)
    glucose = [n for n in header if n.startswith("Glucose Value (")]
    missing = [name for name, ok in ((time_col or "Timestamp (YYYY-MM-DDThh:mm:ss)", time_col), (EVENT, EVENT in idx),
                                     ("Glucose Value (mg/dL) or (mmol/L)", glucose)) if not ok]
    if missing:
        raise MissingColumnError(path, f"Clarity header lacks {', '.join(missing)}", line=1, field=missing[0])
    g = "Glucose Value (mg/dL)" if "Glucose Value (mg/dL)" in idx else glucose[0]
    units = "mmol/L" if "mmol" in g else "mg/dL"
    return idx[time_col], idx[EVENT], idx[g], units, idx


def parse_clarity(path: Path, text: str, *, patient: str, tz: ZoneInfo, errors: Errors) -> CGMExport:
    header_line = first_lines(text, 1)[0]
    delim = sniff_delimiter(header_line)
    rows = csv_rows(text, delim)
    _, header = next(rows)
    t_i, e_i, g_i, units, idx = _columns(path, header)
    time_name, g_name = header[t_i], header[g_i]
    src_i, tx_i = idx.get("Source Device ID"), idx.get("Transmitter ID")
    col = Collector(path, "clarity", errors, tz)
    for line, cells in rows:
        col.rows_read += 1
        cells += [""] * (len(header) - len(cells))
        event = cells[e_i]
        if event != "EGV" and (event not in AMOUNTS or AMOUNTS[event][1] not in idx):
            col.skip(f"event {event or '(blank)'}")
            continue
        try:
            raw_t, raw_g = cells[t_i], cells[g_i]
            try:
                t, naive = parse_iso(raw_t, tz)
                col.local_times += naive
            except ValueError as exc:
                raise RowError(path, f"timestamp {raw_t!r} is not YYYY-MM-DDThh:mm:ss", line=line,
                               field=time_name) from exc
            if event in AMOUNTS:
                kind, name = AMOUNTS[event]
                raw = cells[idx[name]]
                try:
                    amount = decimal(raw, delim)
                except ValueError as exc:
                    raise RowError(path, f"{event} row without a number ({raw!r})", line=line,
                                   field=name) from exc
                col.event(patient, t, kind, amount, line=line, time_field=time_name, field=name)
                continue
            censored = 0
            if raw_g.lower() == "low":
                mgdl, censored = LOW_MGDL, -1
            elif raw_g.lower() == "high":
                mgdl, censored = HIGH_MGDL, 1
            else:
                try:
                    value = decimal(raw_g, delim)
                except ValueError as exc:
                    what = "an EGV row without a glucose value" if not raw_g else f"glucose {raw_g!r} is not a number"
                    raise RowError(path, what, line=line, field=g_name) from exc
                mgdl = value * MGDL_PER_MMOL if units == "mmol/L" else value
            col.add(patient, t, mgdl, censored=censored, line=line, time_field=time_name, glucose_field=g_name,
                    device=cells[src_i] if src_i is not None else None,
                    serial=cells[tx_i] if tx_i is not None else None)
        except RowError as exc:
            col.bad(exc)
    return col.finish(units)
