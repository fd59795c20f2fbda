"""Reading export files as text and CSV rows with their physical line numbers."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

from sim.importers.errors import CGMImportError, EmptyExportError


def read_text(path: Path) -> str:
    """The file as text: UTF-8 (a byte-order mark is dropped) or UTF-16 with a BOM."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CGMImportError(path, f"cannot read the file: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-16") if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CGMImportError(path, f"not UTF-8 or UTF-16 text (byte {exc.start}): save the export as UTF-8") from exc
    if not text.strip():
        raise EmptyExportError(path, "the file is empty")
    return text


def sniff_delimiter(header: str) -> str:
    """The most frequent of comma, semicolon and tab in a header line (comma on a tie)."""
    counts = {d: header.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


def csv_rows(text: str, delimiter: str, *, skip_lines: int = 0) -> Iterator[tuple[int, list[str]]]:
    """(physical line number, cells) of every non-blank row after the first `skip_lines` lines."""
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    for cells in reader:
        if reader.line_num <= skip_lines:
            continue
        if not any(c.strip() for c in cells):
            continue
        yield reader.line_num, [c.strip() for c in cells]


def first_lines(text: str, n: int) -> list[str]:
    return [line.strip() for line in text.splitlines()[:n]]


def decimal(raw: str, delimiter: str) -> float:
    """A number cell; where the delimiter is not a comma, a decimal comma ("5,6") is read as a point.
    ValueError if it is not a number."""
    return float(raw.replace(",", ".") if delimiter != "," else raw)
