"""A fleet over a real Mosquitto: forecaster devices load a signed release from the retained model topic, refuse
tampered, replayed and foreign releases, run LiteRT on their raw readings and report only counts on status."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from device.fleet import run_fleet, summary
from device.inference import AlertMonitor
from device.profiles import load_profile
from device.publisher import Broker, DeviceConfig
from device.traces import write_traces
from federation.clock import SimClock
from federation.litert import TFLiteForecaster
from federation.release import Calibration
from federation.signing import public_key_b64
from federation.telemetry import model_topic, status_topic
from tests.device.releases import CALIBRATION, TFLITE, bit_flipped, payload, release_doc

KEY = Ed25519PrivateKey.generate()
SIM_START = 1_767_225_600
FORECASTER, SENSOR = "gw-1-dev001", "gw-1-dev002"


def trace() -> np.ndarray:
    """Half a day on the 5-min grid: steady, a fast fall to the sensor floor, a climb to 320 mg/dL and a plateau."""
    v = [180.0] * 30 + [max(40.0, 174 - 6 * k) for k in range(26)] + [40.0] * 4
    v += [min(320.0, 50 + 10 * k) for k in range(30)]
    return np.array(v + [320.0] * (144 - len(v)))


def publish(broker, doc_payload: bytes) -> None:  # noqa: ANN001
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"relay-{time.time_ns()}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    info = client.publish(model_topic("gw-1"), doc_payload, qos=1, retain=True)
    info.wait_for_publish(timeout=5)
    client.loop_stop()
    client.disconnect()


def retained_status(broker, device: str) -> dict:  # noqa: ANN001
    got: list[bytes] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"reader-{time.time_ns()}")
    client.on_message = lambda _c, _u, msg: got.append(msg.payload)
    client.connect(broker.host, broker.port)
    client.subscribe(status_topic("gw-1", device), qos=1)
    client.loop_start()
    deadline = time.time() + 5
    while not got and time.time() < deadline:
        time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    return json.loads(got[0]) if got else {}  # nothing retained yet (a loaded machine): callers ask again


def offline_counts(values: np.ndarray) -> dict:
    """What the device must count: the same model and monitor over the same raw readings."""
    lite, cal, mon = TFLiteForecaster(TFLITE), Calibration.from_doc(CALIBRATION), AlertMonitor()
    for k, v in enumerate(values):
        if mon.add_reading(SIM_START + 300 * k, v):
            mon.decide(lite.predict_one(mon.window()), cal)
    return mon.status()["alerts"]


def test_fleet_devices_verify_load_refuse_and_alert_over_mosquitto(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    values = trace()
    traces = tmp_path / "traces.npz"
    write_traces(traces, [FORECASTER, SENSOR], np.arange(len(values)) * 300, np.vstack([values, values]))
    publish(mosquitto, payload(release_doc(KEY, serial=2)))  # what the gateway relay left retained
    # the hub lingers after its trace (as hubs do) so that every release below reaches it however slowly this
    # machine publishes them; it is stopped with SIGTERM once it has taken serial 5 and finished its trace
    configs = [DeviceConfig(device_id=d, gateway="gw-1", seed=1, days=0.5, profile=load_profile(p),
                            trace_file=traces, release_key=public_key_b64(KEY), linger=True)
               for d, p in ((FORECASTER, "pi-zero-2w"), (SENSOR, "dexcom-g7"))]
    # sampling starts 2 s from now (the device connects and loads the retained model first); 120 readings/s
    clock = SimClock(sim_start=SIM_START, wall_start=time.time() + 2.0, accel=36_000)

    async def attacks(stats: dict) -> None:
        deadline = time.time() + 20
        while (FORECASTER not in stats or stats[FORECASTER].model_serial != 2) and time.time() < deadline:
            await asyncio.sleep(0.02)
        for doc in (bit_flipped(release_doc(KEY, serial=3)),  # tampered in transit
                    release_doc(KEY, serial=1),  # an older, validly signed release replayed
                    release_doc(Ed25519PrivateKey.generate(), serial=4),  # signed by someone else
                    release_doc(KEY, serial=5)):  # a genuine newer release (same file): accepted
            await asyncio.to_thread(publish, mosquitto, payload(doc))
        deadline = time.time() + 120
        while time.time() < deadline and not (stats[FORECASTER].model_serial == 5
                                               and stats[FORECASTER].state == "done" and stats[SENSOR].done):
            await asyncio.sleep(0.05)
        signal.raise_signal(signal.SIGTERM)  # run_fleet's handler: devices stop where they are

    stats: dict = {}
    seen: list[bytes] = []  # every status message of the forecaster, live
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="status-watcher")
    watcher.on_message = lambda _c, _u, msg: seen.append(msg.payload)
    watcher.connect(mosquitto.host, mosquitto.port)
    watcher.subscribe(status_topic("gw-1", FORECASTER), qos=1)
    watcher.loop_start()

    async def main() -> None:
        run = asyncio.create_task(run_fleet(configs, clock, Broker(mosquitto.host, mosquitto.port),
                                            state_dir=tmp_path / "state", stats=stats))
        await attacks(stats)
        await run

    try:
        asyncio.run(main())
    finally:
        watcher.loop_stop()
        watcher.disconnect()
    dev, plain = stats[FORECASTER], stats[SENSOR]
    assert not dev.errors and not plain.errors and dev.state == "done" and plain.done
    assert (dev.model_version, dev.model_serial) == (5, 5)
    assert dev.model_refusals == {"tampered": 1, "stale": 1, "bad-signature": 1}
    expected = offline_counts(values)
    assert dev.alerts == expected and expected["hypo_alerts"] >= 1 and expected["hyper_alerts"] >= 1
    assert plain.model_version is None and plain.alerts == {}  # a dexcom-g7 runs no model
    totals = summary(stats)
    assert totals["models_loaded"] == 1 and totals["model_refusals"] == 3 and totals["hypo_alerts"] >= 1

    status = retained_status(mosquitto, FORECASTER)
    # issue 13 item 6: health events (alert and review counts, computed from raw readings outside the budget)
    # stay on the device (its local stats above); the status topic carries no function of a reading
    assert set(status) == {"state", "privacy_rng", "privacy", "model", "model_refusals", "last_refusal",
                           "alert_confidence"}
    assert status["privacy"]["unit"] == "patient-day" and status["privacy"]["budget_per_day"] == 8.0
    assert status["state"] == "done" and status["model"]["serial"] == 5 and status["privacy_rng"] == "secure"
    assert status["model_refusals"] == {"bad-signature": 1, "stale": 1, "tampered": 1}
    assert set(retained_status(mosquitto, SENSOR)) == {"state", "privacy_rng", "privacy"}
    # status is re-sent on a model, refusal or state change only
    assert 2 <= len(seen) <= 12 < expected["forecasts"]
    assert all(b"alerts" not in m and b"readings" not in m and b"cgm" not in m for m in seen)
