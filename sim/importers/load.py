"""Format detection and the one entry point, `load_cgm_export`."""

from __future__ import annotations

from pathlib import Path

from sim.importers.clarity import is_clarity_header, parse_clarity
from sim.importers.errors import CGMImportError, UnknownFormatError
from sim.importers.libreview import DateOrder, is_libreview_header, parse_libreview
from sim.importers.model import ERRORS, CGMExport, Errors, zone
from sim.importers.nightscout import parse_nightscout
from sim.importers.plain_csv import is_plain_header, parse_plain_csv
from sim.importers.textio import first_lines, read_text

FORMATS = ("nightscout", "clarity", "libreview", "csv")
_SIGNATURE = {
    "nightscout": "a JSON array of entries",
    "clarity": "a header with two of 'Event Type', 'Timestamp (...)' and 'Glucose Value (...)'",
    "libreview": "a header (line 1 or 2) with 'Device Timestamp' and 'Record Type'",
    "csv": "a header with timestamp (or time) and glucose (or glucose_mgdl / glucose_mmol)",
}


def detect_format(text: str) -> str | None:
    """The format a file's first lines announce, or None."""
    if text.lstrip()[:1] in ("[", "{"):
        return "nightscout"
    head = first_lines(text, 2)
    if is_clarity_header(head[0]):
        return "clarity"
    if any(is_libreview_header(line) for line in head):
        return "libreview"
    if is_plain_header(head[0]):
        return "csv"
    return None


def load_cgm_export(path: Path | str, *, fmt: str = "auto", tz: str | None = None, patient: str | None = None,
                    units: str | None = None, date_order: DateOrder | None = None, include_scans: bool = False,
                    errors: Errors = "raise") -> CGMExport:
    """Import a CGM export into per-patient mg/dL series on unix-second UTC timestamps.

    fmt: "auto" or one of FORMATS. tz: IANA zone of local timestamps (Clarity, LibreView, ISO without offset;
    UTC if omitted, and the export's notes say so). patient: id for single-patient formats (default: the file
    name without extension). units: plain CSV only. date_order and include_scans: LibreView only.
    errors: "raise" (default) stops at the first bad row; "drop" counts bad rows in `dropped` and goes on;
    "drop-out-of-range" counts only values outside the plausible range and still stops at a malformed row.
    """
    path = Path(path)
    if fmt != "auto" and fmt not in FORMATS:
        raise CGMImportError(path, f"unknown format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    if errors not in ERRORS:
        raise CGMImportError(path, f"errors must be one of {', '.join(ERRORS)}, got {errors!r}")
    text = read_text(path)
    found = detect_format(text)
    if fmt == "auto":
        if found is None:
            first = first_lines(text, 1)[0][:80]
            raise UnknownFormatError(path, f"not a recognised CGM export (first line {first!r}); expected "
                                           + "; or ".join(f"{k}: {v}" for k, v in _SIGNATURE.items()))
        fmt = found
    elif found is not None and found != fmt:  # undetected files go to the parser, which names what is missing
        raise UnknownFormatError(path, f"forced format {fmt!r} but the file does not have {_SIGNATURE[fmt]} "
                                       f"(it looks like {found})")
    for name, value, allowed in (("units", units, "csv"), ("date_order", date_order, "libreview"),
                                 ("include_scans", include_scans or None, "libreview")):
        if value is not None and fmt != allowed:
            raise CGMImportError(path, f"{name}= applies to {allowed} exports, not {fmt}")
    zinfo = zone(tz, path)
    who = patient or path.stem
    if fmt == "nightscout":
        export = parse_nightscout(path, text, patient=who, tz=zinfo, errors=errors)
    elif fmt == "clarity":
        export = parse_clarity(path, text, patient=who, tz=zinfo, errors=errors)
    elif fmt == "libreview":
        export = parse_libreview(path, text, patient=who, tz=zinfo, errors=errors, date_order=date_order,
                                 include_scans=include_scans)
    else:
        export = parse_plain_csv(path, text, patient=who, tz=zinfo, errors=errors, units=units)
    return export
