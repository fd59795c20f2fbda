"""The simulated device enforces its firmware profile against a real Mosquitto: warm-up gaps, a flat battery,
the daily privacy cap, a full store-and-forward buffer, and payloads that carry mechanism, epsilon and range."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import aiomqtt
import pytest

from device.fleet import run_fleet
from device.profiles import load_profile
from device.publisher import Broker, DeviceConfig, DeviceStats
from device.sensor import SENSOR_RANGE
from federation.clock import DEFAULT_SIM_START, SimClock
from federation.telemetry import decode_batch, status_topic
from sim.broker import free_port, start_mosquitto

G7 = load_profile("dexcom-g7")


def _clock(accel: float = 86_400.0) -> SimClock:
    return SimClock(sim_start=DEFAULT_SIM_START, wall_start=time.time() + 0.3, accel=accel)


async def _collect(broker, topic: str, got: list, ready: asyncio.Event) -> None:  # noqa: ANN001
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"test-sub-{time.time_ns()}") as sub:
        await sub.subscribe(topic, qos=1)
        ready.set()
        async for m in sub.messages:
            got.append((str(m.topic), bytes(m.payload), m.retain))


def _run(broker, configs: list[DeviceConfig], state_dir: Path, *, accel: float = 86_400.0,  # noqa: ANN001
         topic: str = "wearfed/v1/#") -> tuple[dict[str, DeviceStats], list]:
    got: list = []

    async def scenario() -> dict[str, DeviceStats]:
        ready = asyncio.Event()
        sub = asyncio.create_task(_collect(broker, topic, got, ready))
        await asyncio.wait_for(ready.wait(), 10)
        stats = await asyncio.wait_for(run_fleet(configs, _clock(accel), Broker(broker.host, broker.port),
                                                 state_dir=state_dir), 60)
        await asyncio.sleep(0.5)
        sub.cancel()
        return stats

    return asyncio.run(scenario()), got


def _readings(got: list) -> list:
    return [r for t, p, _ in got if t.endswith("/readings") for r in decode_batch(p).readings]


def _statuses(got: list, gw: str, dev: str) -> list[dict]:
    return [json.loads(p) for t, p, _ in got if t == status_topic(gw, dev)]


def test_warmup_gap_and_payload_header(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    cfg = DeviceConfig(device_id="gw-1-dev001", gateway="gw-1", seed=3, days=0.25, profile=G7, sensor_age_s=0)
    stats, got = _run(mosquitto, [cfg], tmp_path)
    s = stats["gw-1-dev001"]
    assert s.gaps == 6 and s.sampled == 72 - 6 and s.published == s.sampled and s.done
    readings = _readings(got)
    assert [r.seq for r in readings] == list(range(66))
    assert readings[0].t == DEFAULT_SIM_START + 1800  # nothing during the 30-minute warm-up
    batch = decode_batch(next(p for t, p, _ in got if t.endswith("/readings")))
    # the default guarantee: 8 per patient-day, all of it on glucose here (the synthetic trace knows no insulin
    # or carbs), 288 readings a day
    assert (batch.ldp.mechanism, batch.ldp.epsilon, batch.ldp.lo, batch.ldp.hi) == ("hybrid", 8.0 / 288,
                                                                                      *SENSOR_RANGE)
    assert (batch.privacy.unit, batch.privacy.budget) == ("patient-day", 8.0)
    last = _statuses(got, "gw-1", "gw-1-dev001")[-1]
    assert last["state"] == "done" and last["privacy"]["unit"] == "patient-day"
    assert last["privacy"]["budget_per_day"] == 8.0 and last["privacy"]["epsilon_per_release"] == {"glucose": 8 / 288}


def test_sensor_change_makes_a_second_gap(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    short = dataclasses.replace(G7, session_s=6 * 3600)
    cfg = DeviceConfig(device_id="gw-1-dev001", gateway="gw-1", seed=3, days=0.5, profile=short,
                       sensor_age_s=3 * 3600)
    stats, got = _run(mosquitto, [cfg], tmp_path)
    times = [r.t - DEFAULT_SIM_START for r in _readings(got)]
    assert stats["gw-1-dev001"].gaps == 12  # sensors changed at 3 h and 9 h, each warms up for 30 min
    for change in (3 * 3600, 9 * 3600):
        assert not any(change <= t < change + 1800 for t in times)
        assert change + 1800 in times
    assert len(times) == 144 - 12


def test_flat_battery_stops_the_device_with_an_event(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    # 25 mAh lasts weeks; this cell holds 1 J, and 150 uW idle drains it 6,667 s after the sensor went in
    tiny = dataclasses.replace(G7, battery_mah=1.0 / (3.0 * 3.6), idle_power_uw=150.0)
    cfg = DeviceConfig(device_id="gw-1-dev002", gateway="gw-1", seed=3, days=0.25, profile=tiny, sensor_age_s=1800)
    stats, got = _run(mosquitto, [cfg], tmp_path)
    s = stats["gw-1-dev002"]
    assert s.state == "battery-depleted" and s.battery == 0.0 and s.done and not s.errors
    assert 15 <= s.sampled <= 17  # (6,667 - 1,800) s / 300 s
    # readings taken but not yet sent when the battery died stay stored; none is counted twice or lost
    assert s.buffered == s.sampled - s.published and s.published >= 10
    last = _statuses(got, "gw-1", "gw-1-dev002")[-1]
    assert last["state"] == "battery-depleted"


def test_daily_cap_stops_sending_with_retained_status(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    cfg = DeviceConfig(device_id="gw-1-dev003", gateway="gw-1", seed=3, days=1.25, profile=G7, sensor_age_s=86_400,
                       daily_cap=100 * 8.0, privacy_unit="reading")  # the labelled event-level option
    stats, got = _run(mosquitto, [cfg], tmp_path)
    s = stats["gw-1-dev003"]
    assert s.sampled == 100 + 72 and s.suppressed == 188  # 100 on day 1, then the cap; day 2 starts afresh
    days = [r.t // 86_400 for r in _readings(got)]
    assert days.count(DEFAULT_SIM_START // 86_400) == 100
    states = [x["state"] for x in _statuses(got, "gw-1", "gw-1-dev003")]
    assert "budget-exhausted" in states
    odo = json.loads(next((tmp_path / "odometer").glob("*.json")).read_text())
    assert max(odo["days"].values(), key=lambda e: e["epsilon"])["epsilon"] <= 800.0 + 1e-6

    async def retained() -> dict:  # a late subscriber sees the retained status of a device that stopped mid-day
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="late") as c:
            await c.subscribe(status_topic("gw-1", "gw-1-dev003"), qos=1)
            async for m in c.messages:
                return json.loads(bytes(m.payload))

    assert asyncio.run(asyncio.wait_for(retained(), 10))["state"] == "done"


def test_full_buffer_drops_oldest_while_broker_is_away(tmp_path: Path) -> None:
    small = dataclasses.replace(G7, store_capacity_readings=20)
    port = free_port()
    cfg = DeviceConfig(device_id="gw-1-dev004", gateway="gw-1", seed=3, days=0.25, profile=small, sensor_age_s=3600)
    got: list = []

    async def scenario() -> DeviceStats:
        clock = _clock(86_400 / 2)  # the 6-hour trace is sampled in 0.5 s while nothing listens on the port
        fleet = asyncio.create_task(run_fleet([cfg], clock, Broker("127.0.0.1", port), state_dir=tmp_path / "st"))
        await asyncio.sleep(2.0)
        broker = start_mosquitto(port, tmp_path / "mq")
        try:
            ready = asyncio.Event()
            sub = asyncio.create_task(_collect(broker, "wearfed/v1/+/+/readings", got, ready))
            await asyncio.wait_for(ready.wait(), 10)
            stats = await asyncio.wait_for(fleet, 60)
            await asyncio.sleep(0.5)
            sub.cancel()
        finally:
            broker.stop()
        return stats["gw-1-dev004"]

    s = asyncio.run(scenario())
    assert s.sampled == 72 and s.dropped == 52 and s.reconnects >= 1
    assert [r.seq for r in _readings(got)] == list(range(52, 72))  # the newest 20 survived, in order


@pytest.mark.parametrize("mechanism", ["laplace", "duchi", "piecewise", "hybrid"])
def test_every_mechanism_reaches_the_wire(mosquitto, tmp_path: Path, mechanism: str) -> None:  # noqa: ANN001
    cfg = DeviceConfig(device_id="gw-1-dev005", gateway="gw-1", seed=1, days=0.05, profile=G7, sensor_age_s=3600,
                       ldp_mechanism=mechanism, ldp_epsilon=1.0, daily_cap=1000.0, privacy_unit="reading")
    _, got = _run(mosquitto, [cfg], tmp_path)
    batches = [decode_batch(p) for t, p, _ in got if t.endswith("/readings")]
    assert batches and all(b.ldp.mechanism == mechanism and b.ldp.epsilon == 1.0 for b in batches)


def test_corrupt_odometer_stops_the_device_and_sends_nothing(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    from device.publisher import odometer_for

    cfg = DeviceConfig(device_id="gw-1-dev006", gateway="gw-1", seed=1, days=0.05, profile=G7, sensor_age_s=3600)
    path = odometer_for(cfg, tmp_path).path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"format": "wearfed.privacy_odometer", "version": 1, "days": {"2026-01-01": ')  # torn
    stats, got = _run(mosquitto, [cfg], tmp_path)
    assert stats["gw-1-dev006"].errors and "corrupt" in stats["gw-1-dev006"].errors[0]
    assert _readings(got) == []  # never reset to zero, never sent without accounting


def test_sensor_ages_default_to_warmed_up_or_staggered_by_seed() -> None:
    from device.fleet import fleet_configs

    plain = fleet_configs(gateways=["gw-1"], devices_per_gateway=20, seed=4, days=1.0, profile=G7)
    assert {c.session_origin(DEFAULT_SIM_START) for c in plain} == {DEFAULT_SIM_START - G7.warmup_s}
    staggered = fleet_configs(gateways=["gw-1"], devices_per_gateway=20, seed=4, days=1.0, profile=G7,
                              random_sensor_age=True)
    origins = [c.session_origin(DEFAULT_SIM_START) for c in staggered]
    assert len(set(origins)) == 20 and all(DEFAULT_SIM_START - G7.session_s <= o <= DEFAULT_SIM_START for o in origins)
    again = fleet_configs(gateways=["gw-1"], devices_per_gateway=20, seed=4, days=1.0, profile=G7,
                          random_sensor_age=True)
    assert [c.session_origin(DEFAULT_SIM_START) for c in again] == origins  # deterministic by seed
