"""`wearfed hospital run` as a real subprocess: status file, graceful SIGTERM, refusal of a malformed data file."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device.sensor import synthetic_trace
from federation.errors import SchemaError
from federation.series import PatientSeries
from federation.status import HospitalStatus
from gateway.hospital import load_clinical_csv, write_clinical_csv
from sim.broker import free_port
from sim.processes import wait_until


def hospital(tmp_path: Path, data: Path) -> subprocess.Popen:
    # The cloud URL points at a closed port: the node keeps retrying enrollment and must still stop on SIGTERM.
    return subprocess.Popen([sys.executable, "-m", "federation.cli", "hospital", "run", "--id", "hosp-1",
                             "--state-dir", str(tmp_path / "hosp-1"), "--data", str(data), "--cloud-url",
                             f"http://127.0.0.1:{free_port()}", "--enroll-token", "t", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def clinical(tmp_path: Path) -> Path:
    series = {}
    for k in range(3):
        t, _bg, cgm = synthetic_trace(seed=3, patient=f"p{k}", start=1_767_225_600, days=0.5)
        series[f"p{k}"] = (t, cgm)
    path = tmp_path / "clinical.csv"
    write_clinical_csv(path, series)
    return path


def test_status_file_and_graceful_sigterm(tmp_path: Path) -> None:
    data = clinical(tmp_path)
    proc = hospital(tmp_path, data)
    status_path = tmp_path / "hosp-1" / "status.json"
    try:
        def written() -> bool:
            assert proc.poll() is None, proc.communicate()
            return status_path.exists()

        wait_until(written, timeout=30, what="the hospital's status file", interval=0.1)
        doc = json.loads(status_path.read_text())
        status = HospitalStatus.model_validate(doc)  # the document a real hospital writes is the model's
        assert status.model_dump(mode="json") == doc  # and reads back to the same keys and values
        assert status.kind == "hospital" and status.pid == proc.pid and status.patients == 3 and status.windows > 100
        assert status.enrolled is False and status.privacy.epsilon_cumulative == 0.0
        assert status.privacy.unit == "patient" and status.privacy.delta == 1e-5
        assert status.privacy_rng == "secure" and "stopped" not in doc and "pool_pid" not in doc
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert HospitalStatus.model_validate_json(status_path.read_text()).stopped is True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_malformed_clinical_data_is_refused_with_the_line(tmp_path: Path) -> None:
    data = clinical(tmp_path)
    lines = data.read_text().splitlines()
    lines[5] = "p0,1767227100,nan"
    data.write_text("\n".join(lines) + "\n")
    proc = hospital(tmp_path, data)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and f"{data}:6" in err


def test_csv_round_trip(tmp_path: Path) -> None:
    path = clinical(tmp_path)
    loaded = load_clinical_csv(path)
    assert sorted(loaded) == ["p0", "p1", "p2"]
    assert np.all(np.diff(loaded["p0"].times) == 300) and not loaded["p0"].has_events


def test_insulin_and_carbs_round_trip_with_event_only_rows(tmp_path: Path) -> None:
    t0 = 1_767_225_600
    series = {"p0": PatientSeries(times=t0 + 300 * np.arange(4), glucose=np.array([100.0, 110.0, 120.0, 115.0]),
                                  insulin_times=np.array([t0 + 300, t0 + 450]), insulin_units=np.array([0.05, 4.0]),
                                  carb_times=np.array([t0 + 450]), carb_grams=np.array([45.0]))}
    path = tmp_path / "c.csv"
    write_clinical_csv(path, series)
    lines = path.read_text().splitlines()
    assert lines[0] == "patient,time,glucose,insulin,carbs" and f"p0,{t0 + 450},,4.0,45.0" in lines
    back = load_clinical_csv(path)["p0"]
    np.testing.assert_array_equal(back.glucose, [100.0, 110.0, 120.0, 115.0])
    np.testing.assert_array_equal(back.insulin_times, [t0 + 300, t0 + 450])
    np.testing.assert_allclose(back.insulin_units, [0.05, 4.0])
    np.testing.assert_allclose(back.carb_grams, [45.0])


def test_old_files_without_insulin_and_carbs_still_load_with_a_warning(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "old.csv"
    path.write_text("patient,time,glucose\np0,1767225600,101.5\np0,1767225900,99.0\n")
    with caplog.at_level(logging.WARNING):
        loaded = load_clinical_csv(path)
    assert loaded["p0"].glucose.tolist() == [101.5, 99.0] and not loaded["p0"].has_events
    assert "no insulin or carbs" in caplog.text


@pytest.mark.parametrize(("row", "message"), [
    ("p0,1767225600,100,-1,", "insulin -1.0 out of range"),
    ("p0,1767225600,100,,lots", "carbs 'lots' is not a number"),
    ("p0,1767225600,,,", "needs glucose, insulin or carbs"),
    ("p0,soon,100,,", "time 'soon'"),
    ("p0,1767225600,5,,", "glucose 5.0 mg/dL out of range"),
])
def test_bad_rows_are_refused_naming_line_and_field(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("patient,time,glucose,insulin,carbs\np0,1767225300,100,,\n" + row + "\n")
    with pytest.raises(SchemaError, match=f"{path}:3: .*{message}"):
        load_clinical_csv(path)
