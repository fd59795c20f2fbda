"""Issue 15, device side, with a real Mosquitto and the gateway's real ingest and store: a device releases glucose,
insulin and carbs under one budget per patient-day, declares the unit on the wire and its status, and the budget
stops it when a day's spend would pass it."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np

from device.fleet import run_fleet
from device.odometer import PrivacyOdometer
from device.profiles import load_profile
from device.publisher import Broker, DeviceConfig, odometer_for
from device.traces import write_traces
from federation.clock import DEFAULT_SIM_START, SimClock
from gateway.ingest import ingest_forever
from gateway.store import ReadingStore

DEV = "gw-1-dev001"
DAYS = 1.25


def _trace(tmp_path: Path) -> Path:
    n = int(DAYS * 288)
    k = np.arange(n)
    cgm = 130 + 50 * np.sin(k / 20.0)
    insulin = np.full(n, 0.08)  # basal, units per 5 min
    carbs = np.zeros(n)
    for meal_hour, grams, bolus in ((7.5, 45.0, 5.0), (12.5, 70.0, 7.0), (18.5, 80.0, 8.0), (31.5, 50.0, 5.0)):
        i = int(meal_hour * 12)
        if i < n:
            carbs[i], insulin[i] = grams, insulin[i] + bolus
    path = tmp_path / "traces.npz"
    write_traces(path, [DEV], k * 300, cgm[None, :], insulin=insulin[None, :], carbs=carbs[None, :])
    return path


def _run(mosquitto, tmp_path: Path, cfg: DeviceConfig) -> tuple[dict, ReadingStore]:  # noqa: ANN001
    store = ReadingStore(tmp_path / "gw" / "readings.sqlite")

    async def scenario() -> dict:
        ready = asyncio.Event()
        ingest = asyncio.create_task(ingest_forever(store, "gw-1", host=mosquitto.host, port=mosquitto.port,
                                                    ready=ready))
        await asyncio.wait_for(ready.wait(), 10)
        clock = SimClock(sim_start=DEFAULT_SIM_START, wall_start=time.time() + 0.3, accel=86_400.0)
        stats = await asyncio.wait_for(run_fleet([cfg], clock, Broker(mosquitto.host, mosquitto.port),
                                                 state_dir=tmp_path / "dev"), 60)
        for _ in range(100):
            if store.counts()["ingested"] >= stats[DEV].published:
                break
            await asyncio.sleep(0.1)
        ingest.cancel()
        await asyncio.gather(ingest, return_exceptions=True)
        return stats

    return asyncio.run(scenario()), store


def test_glucose_insulin_and_carbs_under_one_patient_day_budget(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    cfg = DeviceConfig(device_id=DEV, gateway="gw-1", seed=0, days=DAYS, profile=load_profile("dexcom-g7"),
                       sensor_age_s=86_400, trace_file=_trace(tmp_path))
    stats, store = _run(mosquitto, tmp_path, cfg)
    s = stats[DEV]
    assert s.done and not s.errors and s.suppressed == 0 and s.published == s.sampled
    series = store.series()[DEV]
    assert len(series.glucose) == int(DAYS * 288)
    assert len(series.insulin_times) == len(series.carb_times) == int(DAYS * 24) - 1  # full hours only
    assert np.all(np.diff(series.insulin_times) == 3600)
    odo = json.loads(odometer_for(cfg, tmp_path / "dev").path.read_text())
    assert odo["unit"] == "patient-day" and odo["daily_cap"] == 8.0
    for day in odo["days"].values():  # every release of every stream, summed per UTC day, within the budget
        assert day["epsilon"] <= 8.0 * (1 + 1e-9)
    first = odo["days"][min(odo["days"])]
    assert first["epsilon"] > 7.5  # ... and nearly all of it used on a full day (blocks charged ahead)
    with store._lock:
        rows = store._db.execute("SELECT stream, unit, budget, MIN(epsilon), MAX(epsilon) FROM readings "
                                 "GROUP BY stream").fetchall()
    eps = {stream: (unit, budget, lo) for stream, unit, budget, lo, hi in rows if lo == hi}
    assert eps["glucose"] == ("patient-day", 8.0, 6.0 / 288)
    assert eps["insulin"] == eps["carbs"] == ("patient-day", 8.0, 1.0 / 24)
    # the hourly totals are unbiased estimates of the true totals: over the run, the sums agree within noise
    from federation.ldp_range import duchi_bound

    n = len(series.insulin_times)
    true_units = 0.08 * 12 * n + 5 + 7 + 8 + 5
    sd_one = 15 * duchi_bound(1 / 24)  # half the clip range x the mechanism's output bound (hybrid = Duchi here)
    assert abs(series.insulin_units.sum() - true_units) < 6 * sd_one * np.sqrt(n)


def test_the_patient_day_budget_stops_a_device_with_a_status(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    cfg = DeviceConfig(device_id=DEV, gateway="gw-1", seed=0, days=0.5, profile=load_profile("dexcom-g7"),
                       sensor_age_s=86_400, trace_file=_trace(tmp_path), daily_budget=2.0, odometer_block=1)
    path = odometer_for(cfg, tmp_path / "dev").path
    day = time.strftime("%Y-%m-%d", time.gmtime(DEFAULT_SIM_START))
    odo = PrivacyOdometer(path, daily_cap=2.0, mechanism="hybrid", epsilon_per_reading=0.01, unit="patient-day")
    odo.charge(day, epsilon=1.9, releases=1)  # spent earlier today (e.g. before a restart)
    stats, store = _run(mosquitto, tmp_path, cfg)
    s = stats[DEV]
    assert s.suppressed > 0 and s.sampled > 0 and s.state in ("budget-exhausted", "done")
    spent = json.loads(path.read_text())["days"][day]["epsilon"]
    assert spent <= 2.0 * (1 + 1e-9)
    assert store.counts()["ingested"] == s.published
