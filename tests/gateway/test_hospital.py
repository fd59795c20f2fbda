"""`wearfed hospital run` as a real subprocess: status file, graceful SIGTERM, refusal of a malformed data file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from device.sensor import synthetic_trace
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
        status = json.loads(status_path.read_text())
        assert status["kind"] == "hospital" and status["patients"] == 3 and status["windows"] > 100
        assert status["enrolled"] is False and status["privacy"]["epsilon_cumulative"] == 0.0
        assert status["privacy"]["unit"] == "window" and status["privacy"]["delta"] == 1e-5
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert json.loads(status_path.read_text())["stopped"] is True
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
    assert np.all(np.diff(loaded["p0"][0]) == 300)
