"""`wearfed hospital withdraw` against a running `wearfed hospital run` enrolled with the aggregator under uvicorn:
the patient leaves the node's windows at once (status), the withdrawal reaches the audit ledger with counts and the
irreversibility statement, and nothing in the node's state directory names the patient."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from device.sensor import synthetic_trace
from gateway.hospital import write_clinical_csv
from sim.processes import wait_until
from tests.conftest import ENROLL_TOKEN

T0 = 1_767_225_600
PATIENTS = ("pat-alpha-7", "pat-bravo-8", "pat-charlie-9")


def status(state: Path) -> dict:
    try:
        return json.loads((state / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def withdraw(state: Path, data: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "federation.cli", "hospital", "withdraw", "--state-dir", str(state),
                           "--data", str(data), *args], capture_output=True, text=True, timeout=120)


def test_patient_withdrawal_excludes_and_is_audited(tmp_path: Path, cloud) -> None:  # noqa: ANN001
    series = {}
    for p in PATIENTS:
        t, _bg, cgm = synthetic_trace(seed=3, patient=p, start=T0, days=0.5)
        series[p] = (t, cgm)
    data = tmp_path / "clinical.csv"
    write_clinical_csv(data, series)
    state = tmp_path / "hosp-1"
    with open(tmp_path / "hosp.log", "ab") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "federation.cli", "hospital", "run", "--id", "hosp-1",
                                 "--state-dir", str(state), "--data", str(data), "--cloud-url", cloud.url,
                                 "--enroll-token", ENROLL_TOKEN, "--log-level", "warning"],
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_until(lambda: status(state).get("enrolled"), timeout=90, what="enrollment", interval=0.2)
        before = status(state)
        assert before["patients"] == 3 and before["withdrawn_patients"] == 0
        res = withdraw(state, data, "--patient", PATIENTS[1])
        assert res.returncode == 0, res.stderr
        wait_until(lambda: status(state).get("withdrawn_patients") == 1, timeout=30, what="windows rebuilt",
                   interval=0.2)
        after = status(state)
        assert after["patients"] == 2 and 0 < after["windows"] < before["windows"]
        wait_until(lambda: [e for e in cloud.audit_entries() if e["kind"] == "consent.withdrawal"], timeout=30,
                   what="the audit entry", interval=0.2)
        (entry,) = [e for e in cloud.audit_entries() if e["kind"] == "consent.withdrawal"]
        assert entry["actor"] == "hosp-1" and entry["detail"]["subject_kind"] == "patient"
        assert entry["detail"]["deleted"]["windows"] == before["windows"] - after["windows"]
        assert entry["detail"]["deleted"]["rows"] == len(series[PATIENTS[1]][0])
        assert "cannot be removed" in entry["detail"]["irreversible"] and PATIENTS[1] not in json.dumps(entry)
        again = withdraw(state, data, "--patient", PATIENTS[1])  # a repeat changes nothing, reports nothing new
        assert again.returncode == 0 and "1 already" in again.stdout
        wait_until(lambda: status(state).get("consent_reports_pending") == 0, timeout=30, what="report acknowledged",
                   interval=0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert len([e for e in cloud.audit_entries() if e["kind"] == "consent.withdrawal"]) == 1
    for path in state.rglob("*"):
        if path.is_file():
            assert PATIENTS[1].encode() not in path.read_bytes(), path


def test_bad_withdraw_input_exits_2(tmp_path: Path) -> None:
    data = tmp_path / "clinical.csv"
    data.write_text("patient,time,glucose,insulin,carbs\np0,1767225600,100,,\n")
    ids = tmp_path / "ids.txt"
    ids.write_text("p0\nbad,id\n")
    res = withdraw(tmp_path / "h", data, "--patients-file", str(ids))
    assert res.returncode == 2 and "ids.txt:2" in res.stderr and "Traceback" not in res.stderr
    res = withdraw(tmp_path / "h", tmp_path / "missing.csv", "--patient", "p0")
    assert res.returncode == 2 and "missing.csv" in res.stderr
