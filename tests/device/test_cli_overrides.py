"""Issue 14 item 7: command-line overrides are validated like firmware profiles, refused with exit 2 and a message
naming the flag, before any reading is sampled.

Before the fix `wearfed device run --batch-size 600` ran: the broker acknowledged 600-reading batches, the spool
deleted them and the gateway quarantined every one (576 readings never stored). Real subprocesses of the CLI.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sim.broker import free_port

BASE = ["--device-id", "gw-1-dev001", "--gateway", "gw-1", "--days", "0.01"]


def test_batch_size_past_the_wire_limit_is_refused_by_the_real_cli(tmp_path: Path) -> None:
    for argv in (["device", "run", *BASE], ["fleet", "run", "--gateways", "gw-1", "--workers", "2", "--days", "0.01"]):
        out = subprocess.run([sys.executable, "-m", "federation.cli", *argv, "--batch-size", "600",
                              "--broker-port", str(free_port()), "--state-dir", str(tmp_path / "s")],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, out.stderr
        assert "--batch-size 600 is impossible: must be in [1, 512]" in out.stderr
        assert not (tmp_path / "s" / "spool.sqlite").exists()  # refused before anything was sampled


@pytest.mark.parametrize("flags, named", [
    (["--batch-size", "0"], "--batch-size"),
    (["--ldp-epsilon", "0"], "--ldp-epsilon"),
    (["--ldp-epsilon", "1e-300"], "--ldp-epsilon"),
    (["--ldp-mechanism", "gaussian"], "--ldp-mechanism"),
    (["--privacy-unit", "reading", "--ldp-epsilon", "8", "--daily-cap", "1"], "--daily-cap / --ldp-epsilon"),
    (["--ldp-epsilon", "8"], "add --privacy-unit reading"),  # event-level only when asked for by name
    (["--privacy-unit", "reading", "--ldp-mechanism", "laplace", "--ldp-epsilon", "9"], "--ldp-epsilon 9"),
    (["--daily-budget", "0"], "--daily-budget"),
    (["--daily-budget", "100"], "--daily-budget"),
    (["--privacy-unit", "week"], "--privacy-unit"),
    (["--days", "-1"], "--days"),
    (["--days", "nan"], "--days"),
    (["--odometer-block", "0"], "--odometer-block"),
    (["--accel", "0"], "--accel"),
    (["--sensor-age", "-5"], "--sensor-age"),
    (["--alert-confidence", "1.5"], "--alert-confidence"),
])
def test_every_override_is_checked_and_named(tmp_path: Path, flags: list[str], named: str) -> None:
    out = subprocess.run([sys.executable, "-m", "federation.cli", "device", "run", *BASE, "--broker-port",
                          str(free_port()), "--state-dir", str(tmp_path), *flags],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out.stderr[-2000:]
    assert named in out.stderr
