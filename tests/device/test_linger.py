"""Hubs that linger: after their trace a forecaster device stays connected until SIGTERM, then stops cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from federation.clock import DEFAULT_SIM_START
from sim.processes import wait_until


def _fleet(tmp_path: Path, port: int, *, linger: bool) -> tuple[subprocess.Popen, Path]:
    status = tmp_path / ("linger.json" if linger else "plain.json")
    cmd = [sys.executable, "-m", "federation.cli", "fleet", "run", "--gateways", "gw-1", "--devices-per-gateway", "2",
           "--profile", "pi-zero-2w", "--broker-port", str(port), "--days", "0.05", "--accel", "3600",
           "--sim-start", str(DEFAULT_SIM_START), "--wall-start", str(time.time() + 1), "--state-dir",
           str(tmp_path / status.stem), "--status-file", str(status), *(["--linger"] if linger else [])]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), status


def test_lingering_hubs_stay_until_sigterm_and_lose_nothing(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    plain, _ = _fleet(tmp_path, mosquitto.port, linger=False)
    proc, status = _fleet(tmp_path, mosquitto.port, linger=True)
    try:
        assert plain.wait(timeout=60) == 0, plain.communicate()[0]  # without --linger the fleet ends with its trace

        def all_sent() -> bool:
            assert proc.poll() is None, proc.communicate()[0]
            doc = json.loads(status.read_text()) if status.exists() else {}
            per = doc.get("per_device", {})
            return len(per) == 2 and all(d["state"] == "done" and d["buffered"] == 0 for d in per.values())

        wait_until(all_sent, timeout=60, what="both hubs to send their whole trace")
        time.sleep(2.0)
        assert proc.poll() is None  # still connected, waiting for releases
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, proc.communicate()[0]
        doc = json.loads(status.read_text())
        assert doc["errors"] == 0 and doc["published"] == doc["sampled"] > 0
    finally:
        for p in (plain, proc):
            if p.poll() is None:
                p.kill()
                p.wait()
