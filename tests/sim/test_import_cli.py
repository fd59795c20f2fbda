"""`wearfed import`: the real command on exports of our own making (tests/data/cgm_exports/import/), its outputs
read by the hospital loader, the window builder and the device trace reader; malformed files exit 2 naming
file, line (or entry) and field."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from device.traces import load_trace, load_treatments
from federation.cli import main
from federation.windows import windows_from_series
from gateway.hospital import load_clinical_csv

DATA = Path(__file__).parents[1] / "data" / "cgm_exports" / "import"
ROOT = Path(__file__).parents[2]
MGDL_PER_MMOL = 18.0182


def _import(capsys: pytest.CaptureFixture, *args: str | Path) -> tuple[int, str, str]:
    code = main(["import", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _outputs(out: Path) -> tuple[dict, dict, dict]:
    summary = json.loads((out / "import-summary.json").read_text())
    return summary, load_clinical_csv(out / "clinical.csv"), summary["outputs"]


def _trace(out: Path, patient: str, sim_start: int, days: int) -> tuple:
    path = out / "device-traces.npz"
    return load_trace(path, patient, start=sim_start, days=days), load_treatments(path, patient, start=sim_start,
                                                                                   days=days)


def test_nightscout_entries_and_treatments_become_one_patient(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = _import(capsys, "nightscout", DATA / "ann-entries.json", DATA / "ann-treatments.json",
                             "--out", tmp_path)
    assert code == 0, err
    summary, clinical, o = _outputs(tmp_path)
    ann = summary["patients"]["ann"]
    # 288 five-minute slots less a 13-slot hour of no data; 1 repeated upload, 1 mbg, 1 cal, 1 status code
    assert ann["readings"] == 276 and ann["gaps_over_30min"] == 1 and ann["longest_gap_h"] == 1.08
    # boluses 4.5 + 6 + 7 + 1.2 (the repeated 6 U upload counted once) and temp basals 0.8 U/h x 15 min +
    # 1.2 U/h x 60 min in 5-min events (3 + 12); the 0 U/h suspend and the percent-only basal add nothing
    assert ann["insulin_events"] == 4 + 15 and ann["insulin_units"] == pytest.approx(18.7 + 0.2 + 1.2)
    assert ann["carb_events"] == 4 and ann["carb_grams"] == 190
    entries, treatments = summary["files"]
    assert entries["dropped"] == {"duplicate timestamp, same value": 1}
    assert entries["skipped"] == {"type mbg": 1, "type cal": 1, "sgv < 39: Dexcom status code, not a reading": 1}
    assert treatments["dropped"] == {"duplicate insulin event": 1, "duplicate carbs event": 1}
    assert treatments["skipped"]["Temp Basal given only as percent (needs the profile)"] == 1
    assert "276 readings" in out and "ann:" in out and "gaps > 30 min" in out
    # the hospital loader and the window builder
    s = clinical["ann"]
    assert len(s.times) == 276 and len(s.insulin_times) == 19 and len(s.carb_times) == 4
    assert s.insulin_units.sum() == pytest.approx(20.1, abs=0.01) and s.carb_grams.sum() == 190
    windows = windows_from_series(clinical, resampled=True)  # as `hospital run` builds them
    assert len(windows.x) > 100
    assert summary["readback"]["hospital_loader"]["training_windows"]["ann"] == len(windows.x)
    # the device trace reader: readings and treatments at the same UTC times
    (times, cgm), (tt, ins, carbs) = _trace(tmp_path, "ann", o["sim_start"], o["trace_days"])
    assert times.tolist() == s.times.tolist() and np.allclose(cgm, s.glucose, atol=0.05)
    assert ins.sum() == pytest.approx(20.1, abs=1e-3) and carbs.sum() == pytest.approx(190)
    assert o["sim_start"] == int(datetime(2024, 5, 6, tzinfo=UTC).timestamp())


def test_clarity_mmol_with_insulin_and_carbs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = _import(capsys, "clarity", DATA / "bob-clarity.csv", "--tz", "Europe/Berlin", "--patient", "bob",
                             "--out", tmp_path)
    assert code == 0, err
    summary, clinical, o = _outputs(tmp_path)
    f = summary["files"][0]
    assert f["source_units"] == "mmol/L" and f["converted_to_mgdl"] and "(converted to mg/dL)" in out
    # 288 slots less 45 min of signal loss; the repeated row counted; header rows never read as events
    assert f["readings"] == 279 and f["dropped"] == {"duplicate timestamp, same value": 1}
    assert f["skipped"] == {"event Alert": 3, "event Calibration": 1, "event Device": 1, "event Exercise": 1,
                            "event FirstName": 1, "event LastName": 1}
    assert "Test" not in json.dumps(summary) and "Person" not in json.dumps(summary)
    bob = summary["patients"]["bob"]
    assert (bob["low_flagged"], bob["high_flagged"]) == (1, 1)
    assert (bob["insulin_events"], bob["insulin_units"]) == (4, 4.5 + 6 + 7 + 14)  # 3 fast- and 1 long-acting
    assert (bob["carb_events"], bob["carb_grams"]) == (3, 175)
    s = clinical["bob"]
    # 00:02:30 CEST (UTC+2) is 22:02:30 UTC the day before; 6.9 mmol/L x 18.0182
    assert s.times[0] == int(datetime(2024, 5, 5, 22, 2, 30, tzinfo=UTC).timestamp())
    assert s.glucose[0] == pytest.approx(round(6.9 * MGDL_PER_MMOL, 1))
    assert len(s.times) == 279 and len(s.insulin_times) == 4 and len(s.carb_times) == 3
    (times, _), (_, ins, carbs) = _trace(tmp_path, "bob", o["sim_start"], o["trace_days"])
    assert len(times) == 279 and ins.sum() == pytest.approx(31.5) and carbs.sum() == 175


def test_libreview_with_insulin_food_and_scans(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = _import(capsys, "libreview", DATA / "cara-libreview.csv", "--tz", "Europe/Berlin", "--out",
                             tmp_path)
    assert code == 0, err
    summary, clinical, _ = _outputs(tmp_path)
    # 15-min historic readings leave gaps on the forecaster's 5-min grid: no windows, and the user is told
    assert summary["readback"]["hospital_loader"]["training_windows"] == {"cara-libreview": 0}
    assert "warning: cara-libreview gives no training windows" in out
    f = summary["files"][0]
    assert f["skipped"] == {"record type 1 (scan; include_scans=False)": 3, "record type 5 without an amount": 1,
                            "record type 6": 1}
    s = clinical["cara-libreview"]
    assert len(s.times) == 96 and np.diff(s.times).tolist() == [900] * 95
    assert s.insulin_units.sum() == 4 + 6 + 7 + 16 and s.carb_grams.sum() == 175
    code, _, err = _import(capsys, "libreview", DATA / "cara-libreview.csv", "--tz", "Europe/Berlin",
                           "--include-scans", "--force", "--out", tmp_path)
    assert code == 0, err
    assert len(load_clinical_csv(tmp_path / "clinical.csv")["cara-libreview"].times) == 99


def test_plain_csv_counts_out_of_range_and_strict_refuses(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = DATA / "plain-two-patients.csv"
    code, out, err = _import(capsys, "csv", src, "--out", tmp_path)
    assert code == 0, err
    summary, clinical, _ = _outputs(tmp_path)
    assert summary["files"][0]["dropped"] == {"duplicate timestamp, same value": 1, "out-of-range glucose": 1}
    assert f"{src}:129 [glucose]: glucose 700 mg/dL is outside 20-600" in out
    assert {p: len(s.times) for p, s in clinical.items()} == {"dan": 96, "eve": 95}
    assert {p: s.insulin_units.sum() for p, s in clinical.items()} == {"dan": 5, "eve": 3.5}
    code, _, err = _import(capsys, "csv", src, "--strict", "--force", "--out", tmp_path / "strict")
    assert code == 2 and f"{src}:129 [glucose]" in err and not (tmp_path / "strict").exists()


def test_the_same_readings_twice_are_merged_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    copy = tmp_path / "bob-again.csv"
    shutil.copy(DATA / "bob-clarity.csv", copy)
    code, out, err = _import(capsys, "clarity", DATA / "bob-clarity.csv", copy, "--patient", "bob", "--out",
                             tmp_path / "o")
    assert code == 0, err
    summary = json.loads((tmp_path / "o" / "import-summary.json").read_text())
    assert summary["merge_dropped"] == {"duplicate timestamp, same value": 279, "duplicate insulin event": 4,
                                        "duplicate carbs event": 3}
    assert summary["patients"]["bob"]["readings"] == 279 and "merging files: dropped" in out


def test_a_patient_without_treatments_beside_others_is_warned(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    text = (DATA / "plain-two-patients.csv").read_text().splitlines()
    (tmp_path / "mixed.csv").write_text("\n".join(r for r in text if not r.startswith("eve,") or r.endswith(",,"))
                                        + "\n")
    code, out, err = _import(capsys, "csv", tmp_path / "mixed.csv", "--out", tmp_path / "o")
    assert code == 0, err
    summary = json.loads((tmp_path / "o" / "import-summary.json").read_text())
    assert summary["outputs"]["devices_without_treatments"] == ["eve"] and "warning: eve has no insulin" in out


def _mutate(tmp_path: Path, name: str, old: str, new: str, count: int = 1) -> Path:
    text = (DATA / name).read_text()
    assert old in text, old
    p = tmp_path / name
    p.write_text(text.replace(old, new, count))
    return p


@pytest.mark.parametrize(
    ("fmt", "name", "old", "new", "where"),
    [
        ("clarity", "bob-clarity.csv", "2024-05-06T00:07:30", "2024-05-06 half past", ":8 [Timestamp (YYYY"),
        ("clarity", "bob-clarity.csv", ",6.8,", ",6.8x,", ":9 [Glucose Value (mmol/L)]"),
        ("clarity", "bob-clarity.csv", "Android G7,,4.5,", "Android G7,,lots,", ":100 [Insulin Value (u)]"),
        ("clarity", "bob-clarity.csv", "Android G7,,4.5,", "Android G7,,450,", ":100 [Insulin Value (u)]"),
        ("libreview", "cara-libreview.csv", ",,,,,45,,,,,,,,,", ",,,,,45g,,,,,,,,,", " [Carbohydrates (grams)]"),
        ("libreview", "cara-libreview.csv", "Device Timestamp,Record Type", "Device Timestamp,Kind",
         ":2 [Record Type]"),
        ("nightscout", "ann-treatments.json", '"insulin": 4.5', '"insulin": "lots"', " entry 0 [insulin]"),
        ("nightscout", "ann-treatments.json", '"created_at": "2024-05-06T12:30:00.000Z"',
         '"created_at": "half past noon"', " entry 1 [created_at]"),
        ("nightscout", "ann-treatments.json", '"duration": 60', '"duration": -60', " entry 7 [duration]"),
        ("nightscout", "ann-treatments.json", '"carbs": 70,', '"carbs": 70,,', ":27 [json]"),
        ("nightscout", "ann-entries.json", '"sgv": 115.0,', '"sgv": "115 mg/dL",', " [sgv]"),
        ("csv", "plain-two-patients.csv", "patient,timestamp,glucose", "patient,timestamp,bg", ":1 [glucose]"),
        ("csv", "plain-two-patients.csv", ",,5,50", ",,5,fifty", " [carbs]"),
    ],
)
def test_malformed_files_exit_2_naming_file_line_and_field(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                          fmt: str, name: str, old: str, new: str,
                                                          where: str) -> None:
    bad = _mutate(tmp_path, name, old, new)
    extra = ["--strict"] if new == "Android G7,,450," else []  # out of range: counted unless --strict
    args = [fmt, bad, *(([DATA / "ann-entries.json"]) if name == "ann-treatments.json" else []), *extra]
    code, _, err = _import(capsys, *args, "--out", tmp_path / "out")
    assert code == 2
    assert err.startswith(f"wearfed: error: {bad}") and where in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nightscout", DATA / "ann-treatments.json"], "has insulin or carbs but no glucose readings"),
        (["clarity", DATA / "ann-entries.json"], "forced format 'clarity' but the file does not have"),
        (["csv", DATA / "does-not-exist.csv"], "cannot read the file"),
        (["clarity", DATA / "bob-clarity.csv", "--patient", "a/b"], "cannot name a device"),
    ],
)
def test_refusals_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, args: list, message: str) -> None:
    code, _, err = _import(capsys, *args, "--out", tmp_path / "out")
    assert code == 2 and message in err and "Traceback" not in err, err


def test_outputs_are_not_replaced_without_force(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _import(capsys, "clarity", DATA / "bob-clarity.csv", "--out", tmp_path)[0] == 0
    before = (tmp_path / "clinical.csv").read_bytes()
    code, _, err = _import(capsys, "csv", DATA / "plain-two-patients.csv", "--out", tmp_path)
    assert code == 2 and "pass --force" in err and (tmp_path / "clinical.csv").read_bytes() == before


def test_installed_command_exit_2_without_traceback(tmp_path: Path) -> None:
    """The console script, in a fresh process: the message on stderr, exit 2, no traceback."""
    bad = _mutate(tmp_path, "bob-clarity.csv", ",6.8,", ",6.8x,")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "federation.cli", "import", "clarity", str(bad), "--out",
                          str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 2 and f"{bad}:9 [Glucose Value (mmol/L)]" in run.stderr
    assert "Traceback" not in run.stderr


def test_out_of_range_insulin_is_counted_and_reported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = _mutate(tmp_path, "bob-clarity.csv", "Android G7,,4.5,", "Android G7,,450,")
    code, out, err = _import(capsys, "clarity", bad, "--patient", "bob", "--out", tmp_path / "out")
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "import-summary.json").read_text())
    assert summary["files"][0]["dropped"]["out-of-range Insulin Value (u)"] == 1
    assert f"{bad}:100 [Insulin Value (u)]: insulin 450 U is outside 0-100 U for one event" in out
    assert summary["patients"]["bob"]["insulin_events"] == 3


def test_a_scenario_hospital_trains_on_imported_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from federation.errors import ConfigError
    from sim.replay import write_patient_data
    from sim.scenario import load_scenario

    assert _import(capsys, "clarity", DATA / "bob-clarity.csv", "--patient", "bob", "--out", tmp_path / "bob")[0] == 0
    assert _import(capsys, "csv", DATA / "plain-two-patients.csv", "--out", tmp_path / "de")[0] == 0
    toml = tmp_path / "real.toml"
    template = ('[scenario]\nname = "real"\nseed = 1\ndays = 1.0\naccel = 3600\n[rounds]\ncount = 1\n'
                '[[hospitals]]\nid = "hosp-1"\n{first}\n'
                '[[hospitals]]\nid = "hosp-2"\ndata = "de/clinical.csv"\n'
                '[[hospitals]]\nid = "hosp-3"\npatients = 2\n')
    toml.write_text(template.format(first='data = "bob/clinical.csv"'))
    s = load_scenario(toml)
    assert s.hospitals[0].data == (tmp_path / "bob" / "clinical.csv").resolve() and s.hospitals[2].data is None
    (tmp_path / "run").mkdir()
    traces, csvs = write_patient_data(s, tmp_path / "run")
    assert traces is None
    assert {p: len(v.times) for p, v in load_clinical_csv(csvs["hosp-1"]).items()} == {"bob": 279}
    assert {p: len(v.times) for p, v in load_clinical_csv(csvs["hosp-2"]).items()} == {"dan": 96, "eve": 95}
    assert len(load_clinical_csv(csvs["hosp-3"])) == 2  # simulated beside them
    for first, message in (('data = "nowhere.csv"', r"hospitals\[0\]\.data: .*no such file"),
                           ('patients = 2\ndata = "bob/clinical.csv"', "either patients"),
                           ("days = 1.0", "either patients")):
        toml.write_text(template.format(first=first))
        with pytest.raises(ConfigError, match=message):
            load_scenario(toml)


def test_readings_a_few_seconds_off_the_grid_are_counted_as_the_hospital_trains_on_them(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A real sensor's readings drift seconds off the 5-minute grid: the import counts the windows `hospital run` and
    `hospital check` build (resampled), not 0 with a warning (what it said before for this file)."""
    t0 = int(datetime(2026, 11, 20, tzinfo=UTC).timestamp())
    entries = [{"type": "sgv", "date": (t0 + 300 * k + (7 * k) % 31 - 15) * 1000, "sgv": 110 + (k % 30)}
               for k in range(72)]  # 6 h, every reading up to 15 s off the grid
    export = tmp_path / "entries.json"
    export.write_text(json.dumps(entries))
    code, out, err = _import(capsys, "nightscout", export, "--out", tmp_path / "out", "--patient", "jit")
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "import-summary.json").read_text())
    windows = summary["readback"]["hospital_loader"]["training_windows"]["jit"]
    assert windows > 0 and "gives no training windows" not in out, out
    check = subprocess.run([sys.executable, "-m", "federation.cli", "hospital", "check", "--data",
                            str(tmp_path / "out" / "clinical.csv")], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0 and f"windows (2 h history, +30/+60 min targets): {windows}" in check.stdout, check
