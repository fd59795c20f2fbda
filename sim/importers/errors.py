"""Errors of the CGM export importers; each names the file, the line (or JSON entry) and the field.

    CGMImportError (WearfedError, ValueError)
    ├── EmptyExportError     the file has no data rows (or no glucose readings at all)
    ├── UnknownFormatError   the format cannot be detected, or the forced format does not match the file
    ├── MissingColumnError   a required column or key is absent
    ├── AmbiguousDateError   day/month order of a LibreView file cannot be decided, or is inconsistent
    └── RowError             one row has an unparsable timestamp or value, or a timestamp outside 2000-2100
        └── OutOfRangeError  a glucose, insulin or carbs value outside its plausible range (countable with
                             errors="drop-out-of-range")
"""

from __future__ import annotations

from pathlib import Path

from federation.errors import WearfedError


class CGMImportError(WearfedError, ValueError):
    """A CGM export cannot be imported as it stands; the message says where and why."""

    def __init__(self, path: Path | str, message: str, *, line: int | None = None, entry: int | None = None,
                 field: str | None = None) -> None:
        self.path, self.line, self.entry, self.field = Path(path), line, entry, field
        where = str(path)
        if line is not None:
            where += f":{line}"
        if entry is not None:
            where += f" entry {entry}"
        if field is not None:
            where += f" [{field}]"
        super().__init__(f"{where}: {message}")


class EmptyExportError(CGMImportError):
    """No data rows, or no glucose readings once non-glucose rows are set aside."""


class UnknownFormatError(CGMImportError):
    """Auto-detection failed, or the forced format does not match the file."""


class MissingColumnError(CGMImportError):
    """A required column (CSV) or key (JSON) is absent."""


class AmbiguousDateError(CGMImportError):
    """Day-first or month-first cannot be decided from the file, or rows disagree."""


class RowError(CGMImportError):
    """A timestamp or glucose value cannot be parsed or is out of the plausible range."""


class OutOfRangeError(RowError):
    """A well-formed glucose, insulin or carbs value outside its plausible range (a unit mistake, or a bad entry)."""
