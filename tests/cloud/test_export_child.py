"""The cloud's TFLite export child never outlives the cloud, even when the cloud is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sim.broker import free_port, wait_for_port
from sim.processes import wait_until

pytestmark = pytest.mark.usefixtures("tflite_export")  # clouds here export (off elsewhere in the suite)


def _children(pid: int) -> set[int]:
    kids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.add(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc (Linux)")
def test_export_child_exits_when_the_cloud_is_killed(tmp_path: Path) -> None:
    port = free_port()
    cloud = subprocess.Popen([sys.executable, "-m", "federation.cli", "cloud", "serve", "--port", str(port), "--db",
                              f"sqlite:///{tmp_path / 'cloud.db'}", "--state-dir", str(tmp_path / "state"),
                              "--dev-insecure-custodian", "--log-level", "warning"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    try:
        wait_for_port("127.0.0.1", port, timeout=60)
        wait_until(lambda: bool(_children(cloud.pid)), timeout=30, what="the export child to start")
        kids = _children(cloud.pid)
        cloud.send_signal(signal.SIGKILL)
        cloud.wait()
        wait_until(lambda: not any(_alive(k) for k in kids), timeout=30, what="the orphaned export child to exit")
    finally:
        if cloud.poll() is None:
            cloud.kill()
            cloud.wait()
