"""Faults with a real broker and real processes: the broker is down for 30 simulated minutes mid-stream and a
device process is SIGKILLed and restarted; the gateway's own ingest and store end with every reading once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device.sensor import synthetic_trace
from federation.clock import DEFAULT_SIM_START, SimClock
from gateway.ingest import ingest_forever
from gateway.store import ReadingStore
from sim.broker import find_mosquitto, free_port, start_mosquitto

# Started as root, Mosquitto drops to the "mosquitto" user, which cannot write its persistence file under
# pytest's 0700 tmp dir; without it, messages queued for the gateway would not survive the broker restart.


def _device_cmd(dev: str, *, port: int, days: float, clock: SimClock, state: Path) -> list[str]:
    return [sys.executable, "-m", "federation.cli", "device", "run", "--device-id", dev, "--gateway", "gw-1",
            "--broker-port", str(port), "--privacy-rng", "simulation", "--seed", "5", "--days", str(days),
            "--accel", str(clock.accel),
            "--sim-start", str(clock.sim_start), "--wall-start", str(clock.wall_start), "--state-dir", str(state),
            "--sensor-age", "86400", "--status-file", str(state / "status.json"),
            # each kill forfeits up to a block of budget reserved ahead; room for three kills in one day
            "--privacy-unit", "reading", "--ldp-epsilon", "8", "--daily-cap", str(8.0 * (288 + 3 * 12))]


def _scenario(tmp_path: Path, *, devices: int, days: float, accel: float, kills: list[float],
              outages: list[float]) -> None:
    """`kills`/`outages`: fractions of the simulated span at which to SIGKILL every device / stop the broker."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed")
    port = free_port()
    broker = start_mosquitto(port, tmp_path / "mq")
    store = ReadingStore(tmp_path / "gw" / "readings.sqlite")
    clock = SimClock(sim_start=DEFAULT_SIM_START, wall_start=time.time() + 3.0, accel=accel)
    span = days * 86400
    names = [f"gw-1-dev{k:03d}" for k in range(1, devices + 1)]
    cmds = {d: _device_cmd(d, port=port, days=days, clock=clock, state=tmp_path / d) for d in names}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    logs = {d: open(tmp_path / f"{d}.log", "ab") for d in names}  # noqa: SIM115
    procs: dict[str, subprocess.Popen] = {}

    def spawn(d: str) -> None:
        procs[d] = subprocess.Popen(cmds[d], stdout=logs[d], stderr=subprocess.STDOUT, env=env)

    async def run() -> None:
        nonlocal broker
        ready = asyncio.Event()
        ingest = asyncio.create_task(ingest_forever(store, "gw-1", host="127.0.0.1", port=port, ready=ready))
        await asyncio.wait_for(ready.wait(), 10)
        for d in names:
            spawn(d)
        events = sorted([(f, "kill") for f in kills] + [(f, "outage") for f in outages])
        for frac, what in events:
            await asyncio.sleep(max(0.0, clock.wall_at(clock.sim_start + frac * span) - time.time()))
            if what == "kill":
                for d in names:
                    procs[d].send_signal(signal.SIGKILL)
                    procs[d].wait()
                await asyncio.sleep(1.0)
                for d in names:
                    spawn(d)
            else:
                broker.stop()
                await asyncio.sleep(max(0.0, 1800 / accel))  # 30 simulated minutes without a broker
                broker = start_mosquitto(port, tmp_path / "mq")
        deadline = time.time() + span / accel + 90
        for d in names:
            while procs[d].poll() is None and time.time() < deadline:
                await asyncio.sleep(0.2)
            assert procs[d].returncode == 0, (tmp_path / f"{d}.log").read_text()[-3000:]
        expected = len(names) * int(round(span / 300))
        while store.counts()["ingested"] < expected and time.time() < deadline:
            await asyncio.sleep(0.2)
        ingest.cancel()
        await asyncio.gather(ingest, return_exceptions=True)

    try:
        asyncio.run(run())
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        broker.stop()
    series = store._db.execute("SELECT device, seq, t FROM readings ORDER BY device, seq").fetchall()
    for d in names:
        times, _, _ = synthetic_trace(seed=5, patient=d, start=int(clock.sim_start), days=days, interval_s=300)
        got = [(seq, t) for dev, seq, t in series if dev == d]
        assert got == [(i, int(t)) for i, t in enumerate(times)], f"{d}: missing or out-of-order readings"
    assert store.counts()["rejected"] == 0
    if outages and max(outages) > max(kills, default=0):  # the last process lived through a broker outage
        for d in names:
            status = json.loads((tmp_path / d / "status.json").read_text())
            assert status["reconnects"] >= 1 and status["suppressed"] == 0 and status["dropped"] == 0


def test_broker_outage_and_device_kill_lose_nothing(tmp_path: Path) -> None:
    _scenario(tmp_path, devices=1, days=0.25, accel=1800.0, kills=[0.3], outages=[0.6])


@pytest.mark.slow
def test_repeated_outages_and_kills_lose_nothing(tmp_path: Path) -> None:
    _scenario(tmp_path, devices=3, days=1.0, accel=900.0, kills=[0.15, 0.45, 0.7], outages=[0.3, 0.55, 0.8])
