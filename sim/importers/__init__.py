"""Importers of real CGM exports (Nightscout, Dexcom Clarity, LibreView, plain CSV) into mg/dL series on UTC time.

    export = load_cgm_export("clarity.csv", tz="Europe/Berlin")
    for series in export.patients.values(): series.times, series.glucose_mgdl
    export.report()  # rows read, skipped and dropped by reason: nothing is lost silently
"""

from sim.importers.errors import (
    AmbiguousDateError,
    CGMImportError,
    EmptyExportError,
    MissingColumnError,
    OutOfRangeError,
    RowError,
    UnknownFormatError,
)
from sim.importers.load import FORMATS, detect_format, load_cgm_export
from sim.importers.model import MGDL_PER_MMOL, CGMExport, PatientSeries

__all__ = [
    "FORMATS", "MGDL_PER_MMOL", "AmbiguousDateError", "CGMExport", "CGMImportError", "EmptyExportError",
    "MissingColumnError", "OutOfRangeError", "PatientSeries", "RowError", "UnknownFormatError", "detect_format",
    "load_cgm_export",
]
