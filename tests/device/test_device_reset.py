"""Issue 14 item 6 with real processes: a device whose state was reset (a fresh --state-dir, as a re-imaged hub or
the default temporary directory gives) restarts at seq 0; its readings are stored under a new epoch.

Real Mosquitto, a real `wearfed gateway ingest` and two real `wearfed device run` subprocesses. Before the fix the
gateway dropped all of the second run's readings as duplicates of the first run's (72 of 72 in the issue), with
no quarantine and no warning. A reading that re-uses a stored (device, epoch, seq) with other data is quarantined
with a reason, never dropped silently.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from federation.clock import DEFAULT_SIM_START
from federation.telemetry import LDPHeader, Privacy, Reading, ReadingBatch, encode_batch
from tests.gateway.test_ingest_crash import publisher, start_gateway, status, wait
from tests.gateway.test_ingest_poison import publish, quarantine_reasons

DEV = "gw-1-dev001"
DAYS, ACCEL = 0.1, 3600.0  # 29 five-minute readings in about 2.4 wall seconds


def run_device(broker, state: Path, log: Path) -> int:  # noqa: ANN001
    cmd = [sys.executable, "-m", "federation.cli", "device", "run", "--device-id", DEV, "--gateway", "gw-1",
           "--broker-port", str(broker.port), "--days", str(DAYS), "--accel", str(ACCEL),
           "--sim-start", str(DEFAULT_SIM_START), "--wall-start", str(time.time() + 0.5),
           "--sensor-age", "86400", "--state-dir", str(state)]
    with open(log, "ab") as out:
        return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=120).returncode


def test_a_reset_device_is_stored_under_a_new_epoch(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    gw_state = tmp_path / "gw-1"
    gw_state.mkdir()
    devices = tmp_path / "devices.txt"
    devices.write_text(f"{DEV}\n")
    gw = start_gateway(mosquitto, gw_state, devices)
    try:
        wait(lambda: status(gw_state).get("subscribed"), "the gateway to subscribe")
        assert run_device(mosquitto, tmp_path / "first", tmp_path / "dev.log") == 0
        wait(lambda: status(gw_state).get("ingested", 0) >= 29, "the first run's readings")
        first = status(gw_state)["ingested"]

        assert run_device(mosquitto, tmp_path / "reimaged", tmp_path / "dev.log") == 0  # all state lost
        wait(lambda: status(gw_state).get("ingested", 0) >= 2 * first, "the reset device's readings", timeout=30)
        doc = status(gw_state)
        assert doc["ingested"] == 2 * first and doc["duplicates"] == 0 and doc["device_resets"] == 1

        with sqlite3.connect(gw_state / "readings.sqlite") as db:
            epochs = [e for (e,) in db.execute("SELECT DISTINCT epoch FROM readings")]
            seq0 = db.execute("SELECT epoch, t, value, epsilon, budget FROM readings WHERE seq = 0").fetchall()
        assert len(epochs) == 2 and len(seq0) == 2  # both runs' seq 0, kept apart by their epochs

        # the same (device, epoch, seq) with other data: quarantined with a reason, nothing overwritten
        epoch, t, value, eps, budget = seq0[0]
        other = 220.0 if value != 220.0 else 221.0  # inside every LDP output range (the clip range's middle);
        # the negated value fell outside it for some noise draws and was refused by the range check instead
        pub = publisher(mosquitto)
        forged = ReadingBatch(device=DEV, epoch=epoch, ldp=LDPHeader("hybrid", eps, 40.0, 400.0),
                              privacy=Privacy("patient-day", budget), readings=(Reading(0, t, other),))
        publish(pub, DEV, encode_batch(forged))
        pub.loop_stop()
        pub.disconnect()
        wait(lambda: status(gw_state).get("rejected") == 1, "the conflicting reading to be quarantined")
        reasons = quarantine_reasons(gw_state)
        assert any("re-use a stored sequence number" in r for r in reasons), reasons
        assert status(gw_state)["ingested"] == 2 * first
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(timeout=15)
