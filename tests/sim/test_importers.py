"""CGM export importers: one fixture per format (written from the formats' documentation), every failure mode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.importers import (
    MGDL_PER_MMOL,
    AmbiguousDateError,
    CGMImportError,
    EmptyExportError,
    MissingColumnError,
    OutOfRangeError,
    RowError,
    UnknownFormatError,
    detect_format,
    load_cgm_export,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "cgm_exports"
T0 = 1709625600  # 2024-03-05T08:00:00Z, first reading of most fixtures


def _copy_with(tmp_path: Path, name: str, old: str, new: str, *, count: int = 1) -> Path:
    text = (DATA / name).read_text()
    assert old in text, old
    out = tmp_path / name
    out.write_text(text.replace(old, new, count))
    return out


# ---------------------------------------------------------------- formats


def test_detects_every_fixture_format() -> None:
    expect = {"nightscout_entries.json": "nightscout", "clarity_mgdl.csv": "clarity", "clarity_mmol.csv": "clarity",
              "libreview_eu_mgdl.csv": "libreview", "libreview_us_mgdl.csv": "libreview",
              "libreview_eu_mmol.csv": "libreview", "plain_unix_mgdl.csv": "csv", "plain_iso_mmol.csv": "csv",
              "plain_patients.csv": "csv", "libreview_ambiguous_dates.csv": "libreview"}
    for name, fmt in expect.items():
        assert detect_format((DATA / name).read_text()) == fmt, name


def test_nightscout_keeps_sgv_only_sorted_and_deduplicated() -> None:
    e = load_cgm_export(DATA / "nightscout_entries.json")
    assert (e.fmt, e.source_units, e.converted) == ("nightscout", "mg/dL", False)
    s = e.patients["nightscout_entries"]
    assert s.times.dtype == np.int64 and s.glucose_mgdl.dtype == np.float64
    assert s.times.tolist() == [T0 + 300 * i for i in range(8)]  # the file is newest-first
    assert s.glucose_mgdl.tolist() == [112, 115, 119, 124, 130, 127, 121, 118]
    assert e.skipped == {"type mbg": 1, "type cal": 1, "sgv < 39: Dexcom status code, not a reading": 1}
    assert e.dropped == {"duplicate timestamp, same value": 1}
    assert e.rows_read == 12 == e.readings + sum(e.skipped.values()) + sum(e.dropped.values())
    assert "xDrip-DexcomG6" in s.devices


def test_nightscout_falls_back_to_datestring(tmp_path: Path) -> None:
    entries = [{"type": "sgv", "sgv": 140, "dateString": "2024-03-05T09:00:00+01:00"},
               {"sgv": 150, "dateString": "2024-03-05T08:05:00Z"}]  # no type: an sgv entry
    p = tmp_path / "ns.json"
    p.write_text(json.dumps(entries))
    s = load_cgm_export(p, patient="pt-9").patients["pt-9"]
    assert s.times.tolist() == [T0, T0 + 300] and s.glucose_mgdl.tolist() == [140, 150]


def test_clarity_mgdl_low_high_flags_and_events() -> None:
    e = load_cgm_export(DATA / "clarity_mgdl.csv", tz="UTC")
    s = e.patients["clarity_mgdl"]
    assert s.glucose_mgdl.tolist() == [98, 101, 40, 40, 45, 400, 350, 330]
    assert s.censored.tolist() == [0, 0, -1, -1, 0, 1, 0, 0]
    assert s.times.tolist() == [T0 + 300 * i for i in range(8)]
    assert e.skipped["event Calibration"] == 1 and e.skipped["event Alert"] == 3 and "event Insulin" not in e.skipped
    # Insulin and Carbs rows are events now (issue 12)
    assert s.insulin_times.tolist() == [T0 + 720] and s.insulin_units.tolist() == [2.5]
    assert s.carb_times.tolist() == [T0 + 1080] and s.carb_grams.tolist() == [15]
    assert s.serials == ("X7K2Q9",) and s.devices == ("iOS G7",)
    assert e.report()["patients"]["clarity_mgdl"]["low_flagged"] == 2
    assert "Test" not in json.dumps(e.report())  # patient-information values are never read


def test_clarity_mmol_converts_with_18_0182() -> None:
    e = load_cgm_export(DATA / "clarity_mmol.csv")
    s = e.patients["clarity_mmol"]
    assert e.source_units == "mmol/L" and e.converted
    assert s.glucose_mgdl.tolist() == pytest.approx([5.4 * 18.0182, 5.6 * 18.0182, 400, 6.1 * 18.0182])
    assert s.censored.tolist() == [0, 0, 1, 0] and MGDL_PER_MMOL == 18.0182


def test_local_time_zone_is_applied() -> None:
    utc = load_cgm_export(DATA / "clarity_mgdl.csv").patients["clarity_mgdl"].times
    berlin = load_cgm_export(DATA / "clarity_mgdl.csv", tz="Europe/Berlin").patients["clarity_mgdl"].times
    assert (utc - berlin).tolist() == [3600] * len(utc)  # CET is UTC+1 in March
    assert any("read as local time in UTC" in n for n in load_cgm_export(DATA / "clarity_mgdl.csv").notes)


def test_libreview_eu_and_us_locales_agree() -> None:
    eu = load_cgm_export(DATA / "libreview_eu_mgdl.csv")
    us = load_cgm_export(DATA / "libreview_us_mgdl.csv")
    a, b = eu.patients["libreview_eu_mgdl"], us.patients["libreview_us_mgdl"]
    assert a.times.tolist() == b.times.tolist()
    assert a.times[0] == 1710367200  # 2024-03-13 22:00 UTC
    assert np.diff(a.times).tolist() == [900] * 4  # historic readings every 15 min
    assert a.glucose_mgdl.tolist() == b.glucose_mgdl.tolist() == [104, 98, 91, 87, 95]
    assert eu.skipped == {"record type 1 (scan; include_scans=False)": 1, "record type 6": 1}
    assert a.carb_times.tolist() == [1710368400] and a.carb_grams.tolist() == [20]  # record type 5: food
    assert "Device Timestamp read as DMY" in eu.notes and "Device Timestamp read as MDY" in us.notes
    assert a.serials == ("0A1B2C3D-0000-4000-8000-00000000TEST",)


def test_libreview_scans_and_mmol() -> None:
    e = load_cgm_export(DATA / "libreview_eu_mgdl.csv", include_scans=True)
    s = e.patients["libreview_eu_mgdl"]
    assert len(s.times) == 6 and 96.0 in s.glucose_mgdl.tolist()
    m = load_cgm_export(DATA / "libreview_eu_mmol.csv").patients["libreview_eu_mmol"]
    assert m.glucose_mgdl[0] == pytest.approx(5.8 * MGDL_PER_MMOL)


def test_libreview_ambiguous_dates_refused_unless_order_given() -> None:
    with pytest.raises(AmbiguousDateError, match="date_order='DMY' or 'MDY'"):
        load_cgm_export(DATA / "libreview_ambiguous_dates.csv")
    dmy = load_cgm_export(DATA / "libreview_ambiguous_dates.csv", date_order="DMY")
    mdy = load_cgm_export(DATA / "libreview_ambiguous_dates.csv", date_order="MDY")
    t_dmy = dmy.patients["libreview_ambiguous_dates"].times[0]
    t_mdy = mdy.patients["libreview_ambiguous_dates"].times[0]
    assert t_dmy == 1709676000  # 5 March 2024 22:00 UTC
    assert t_mdy == 1714773600  # 3 May 2024 22:00 UTC


def test_libreview_contradicting_order_and_mixed_file_refused(tmp_path: Path) -> None:
    with pytest.raises(AmbiguousDateError, match="proves DMY"):
        load_cgm_export(DATA / "libreview_eu_mgdl.csv", date_order="MDY")
    mixed = _copy_with(tmp_path, "libreview_eu_mgdl.csv", "13-03-2024 22:30", "03-14-2024 22:30")
    with pytest.raises(AmbiguousDateError, match="day-first but line") as info:
        load_cgm_export(mixed)
    assert info.value.field == "Device Timestamp"


def test_plain_csv_unix_iso_mmol_and_patients() -> None:
    e = load_cgm_export(DATA / "plain_unix_mgdl.csv")
    s = e.patients["plain_unix_mgdl"]
    assert s.glucose_mgdl.tolist() == [120, 118, 118, 121, 125] and e.dropped == {"duplicate timestamp, same value": 1}
    iso = load_cgm_export(DATA / "plain_iso_mmol.csv").patients["plain_iso_mmol"]
    assert iso.times.tolist() == [T0, T0 + 300, T0 + 600]  # +01:00 honoured
    assert iso.glucose_mgdl.tolist() == pytest.approx([6.7 * 18.0182, 6.5 * 18.0182, 6.4 * 18.0182])
    both = load_cgm_export(DATA / "plain_patients.csv")
    assert sorted(both.patients) == ["p-001", "p-002"] and both.readings == 8


def test_plain_csv_units_argument(tmp_path: Path) -> None:
    p = tmp_path / "mmol.csv"
    p.write_text(f"timestamp,glucose\n{T0},5.5\n{T0 + 300},5.9\n")
    with pytest.raises(RowError, match="pass units='mmol/L'"):
        load_cgm_export(p)
    s = load_cgm_export(p, units="mmol/L").patients["mmol"]
    assert s.glucose_mgdl.tolist() == pytest.approx([5.5 * 18.0182, 5.9 * 18.0182])
    with pytest.raises(CGMImportError, match="is mmol/L but units='mg/dL'"):
        load_cgm_export(DATA / "plain_iso_mmol.csv", units="mg/dL")


def test_conflicting_duplicate_keeps_first_in_file_and_counts(tmp_path: Path) -> None:
    p = tmp_path / "dup.csv"
    p.write_text(f"timestamp,glucose\n{T0 + 300},130\n{T0},100\n{T0 + 300},131\n")
    e = load_cgm_export(p)
    assert e.patients["dup"].glucose_mgdl.tolist() == [100, 130]
    assert e.dropped == {"duplicate timestamp, different value (first in file kept)": 1}


@settings(max_examples=30, deadline=None)
@given(st.permutations(list(range(8))))
def test_row_order_does_not_matter(tmp_path_factory: pytest.TempPathFactory, order: list[int]) -> None:
    p = tmp_path_factory.mktemp("perm") / "p.csv"
    p.write_text("timestamp,glucose\n" + "".join(f"{T0 + 300 * i},{100 + i}\n" for i in order))
    s = load_cgm_export(p).patients["p"]
    assert s.times.tolist() == [T0 + 300 * i for i in range(8)]
    assert s.glucose_mgdl.tolist() == [100 + i for i in range(8)]


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("name", "old", "new", "field"),
    [
        ("clarity_mgdl.csv", "Event Type", "Kind", "Event Type"),
        ("clarity_mgdl.csv", "Glucose Value (mg/dL)", "Glucose", "Glucose Value (mg/dL) or (mmol/L)"),
        ("libreview_eu_mgdl.csv", "Historic Glucose mg/dL", "Historic", "Historic Glucose mg/dL"),
        ("plain_unix_mgdl.csv", "timestamp,glucose", "timestamp,bg", "glucose"),
    ],
)
def test_missing_columns(tmp_path: Path, name: str, old: str, new: str, field: str) -> None:
    p = _copy_with(tmp_path, name, old, new)
    with pytest.raises(MissingColumnError) as info:
        load_cgm_export(p, fmt=name.split("_")[0].replace("plain", "csv"))
    assert str(p) in str(info.value) and info.value.field == field


@pytest.mark.parametrize(
    ("name", "old", "new", "line", "field"),
    [
        ("clarity_mgdl.csv", "2024-03-05T08:05:00", "2024-03-05 quarter past", 9, "Timestamp (YYYY-MM-DDThh:mm:ss)"),
        ("clarity_mgdl.csv", ",iOS G7,101,", ",iOS G7,1o1,", 9, "Glucose Value (mg/dL)"),
        ("clarity_mgdl.csv", ",iOS G7,101,", ",iOS G7,,", 9, "Glucose Value (mg/dL)"),
        ("clarity_mgdl.csv", ",iOS G7,101,", ",iOS G7,1010,", 9, "Glucose Value (mg/dL)"),
        ("libreview_eu_mgdl.csv", "13-03-2024 22:15", "13-03-2024 25:15", 4, "Device Timestamp"),
        ("libreview_eu_mgdl.csv", "13-03-2024 22:15", "31-02-2024 22:15", 4, "Device Timestamp"),
        ("libreview_us_mgdl.csv", "10:15 PM", "13:15 PM", 4, "Device Timestamp"),
        ("libreview_eu_mgdl.csv", ",0,98,", ",0,-98,", 4, "Historic Glucose mg/dL"),
        ("plain_unix_mgdl.csv", "1709625900,118", "yesterday,118", 3, "timestamp"),
        ("plain_unix_mgdl.csv", "1709625900,118", "1709625900000,118", 3, "timestamp"),
        ("plain_unix_mgdl.csv", "1709625900,118", "1709625900,NaN", 3, "glucose"),
        ("plain_unix_mgdl.csv", "1709625900,118", "1709625900,5", 3, "glucose"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path: Path, name: str, old: str, new: str, line: int,
                                           field: str) -> None:
    p = _copy_with(tmp_path, name, old, new)
    with pytest.raises(RowError) as info:
        load_cgm_export(p)
    err = info.value
    assert (err.line, err.field, err.path) == (line, field, p)
    assert f"{p}:{line} [{field}]" in str(err)
    # errors="drop" goes on, and counts the row instead of losing it silently
    kept = load_cgm_export(p, errors="drop")
    what = "out-of-range" if isinstance(err, OutOfRangeError) else "invalid"
    assert kept.dropped[f"{what} {field}"] == 1
    assert any(str(p) in n for n in kept.notes)
    clean = load_cgm_export(DATA / name)
    assert kept.readings == clean.readings - 1
    # "drop-out-of-range" counts only plausibility failures; a malformed row still stops the import
    if isinstance(err, OutOfRangeError):
        assert load_cgm_export(p, errors="drop-out-of-range").dropped == kept.dropped
    else:
        with pytest.raises(RowError):
            load_cgm_export(p, errors="drop-out-of-range")


@pytest.mark.parametrize(
    ("entry", "field"),
    [({"type": "sgv", "sgv": "high", "date": 1709625600000}, "sgv"),
     ({"type": "sgv", "sgv": 120}, "date"),
     ({"type": "sgv", "sgv": 120, "date": 1709625600}, "date"),  # seconds where milliseconds belong
     ({"type": "sgv", "sgv": 120, "dateString": "tuesday"}, "dateString"),
     ({"type": "sgv", "date": 1709625600000}, "sgv"),
     ({"type": "sgv", "sgv": 1200, "date": 1709625600000}, "sgv")],
)
def test_nightscout_bad_entries(tmp_path: Path, entry: dict, field: str) -> None:
    p = tmp_path / "ns.json"
    p.write_text(json.dumps([{"type": "sgv", "sgv": 100, "date": 1709625300000}, entry]))
    with pytest.raises(RowError) as info:
        load_cgm_export(p)
    assert (info.value.entry, info.value.field) == (1, field)
    what = "out-of-range" if isinstance(info.value, OutOfRangeError) else "invalid"
    assert load_cgm_export(p, errors="drop").dropped == {f"{what} {field}": 1}


def test_nightscout_structural_errors(tmp_path: Path) -> None:
    p = tmp_path / "ns.json"
    p.write_text('[{"type": "sgv", "sgv": 100,')
    with pytest.raises(CGMImportError, match="invalid JSON"):
        load_cgm_export(p)
    p.write_text('{"sgv": 100}')
    with pytest.raises(UnknownFormatError, match="JSON array"):
        load_cgm_export(p)
    p.write_text('[{"type": "mbg", "mbg": 100, "date": 1709625300000}]')
    with pytest.raises(EmptyExportError, match="type mbg: 1"):
        load_cgm_export(p)
    p.write_text("[]")
    with pytest.raises(EmptyExportError, match="0 rows read"):
        load_cgm_export(p)


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("  \n")
    with pytest.raises(EmptyExportError, match="empty"):
        load_cgm_export(empty)
    for name in ("clarity_mgdl.csv", "plain_unix_mgdl.csv"):
        header_only = tmp_path / name
        header_only.write_text((DATA / name).read_text().splitlines()[0] + "\n")
        with pytest.raises(EmptyExportError, match="no glucose readings"):
            load_cgm_export(header_only)
    title_only = tmp_path / "libre.csv"
    title_only.write_text("Glucose Data,Generated on,05-03-2024 12:00 UTC,Generated by,Test Subject\n")
    with pytest.raises(UnknownFormatError):
        load_cgm_export(title_only)


def test_wrong_format_forced_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(UnknownFormatError, match="looks like libreview"):
        load_cgm_export(DATA / "libreview_eu_mgdl.csv", fmt="clarity")
    with pytest.raises(UnknownFormatError, match="looks like nightscout"):
        load_cgm_export(DATA / "nightscout_entries.json", fmt="csv")
    other = tmp_path / "other.csv"
    other.write_text("name,score\nx,1\n")
    with pytest.raises(UnknownFormatError, match="not a recognised CGM export"):
        load_cgm_export(other)
    with pytest.raises(CGMImportError, match="unknown format"):
        load_cgm_export(other, fmt="medtronic")


def test_bad_arguments_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(CGMImportError, match="units= applies to csv"):
        load_cgm_export(DATA / "clarity_mgdl.csv", units="mmol/L")
    with pytest.raises(CGMImportError, match="date_order= applies to libreview"):
        load_cgm_export(DATA / "plain_unix_mgdl.csv", date_order="DMY")
    with pytest.raises(CGMImportError, match="unknown time zone"):
        load_cgm_export(DATA / "clarity_mgdl.csv", tz="Mars/Olympus")
    with pytest.raises(CGMImportError, match="errors must be"):
        load_cgm_export(DATA / "clarity_mgdl.csv", errors="ignore")  # type: ignore[arg-type]
    with pytest.raises(CGMImportError, match="cannot read"):
        load_cgm_export(tmp_path / "missing.csv")
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"timestamp,glucose\n\x80\x81,1\n")
    with pytest.raises(CGMImportError, match="not UTF-8"):
        load_cgm_export(binary)


def test_utf8_bom_and_semicolon_decimal_comma(tmp_path: Path) -> None:
    p = tmp_path / "libre.csv"
    text = (DATA / "libreview_eu_mmol.csv").read_text()
    lines = text.splitlines()
    converted = [lines[0]] + [line.replace(",", ";") for line in lines[1:]]
    converted = [c.replace("5.8", "5,8") for c in converted]
    p.write_bytes(b"\xef\xbb\xbf" + "\n".join(converted).encode())
    s = load_cgm_export(p).patients["libre"]
    assert s.glucose_mgdl[0] == pytest.approx(5.8 * MGDL_PER_MMOL) and len(s.times) == 5
