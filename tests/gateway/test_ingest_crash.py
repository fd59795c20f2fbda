"""A real `kill -9` of a gateway subprocess mid-stream: nothing the broker accepted is lost, nothing is counted twice.

The gateway acknowledges a QoS 1 message only after SQLite has committed it; its session is persistent, so
after the kill the broker redelivers whatever was not acknowledged and (device, seq) drops the re-sent part
that had been stored. Real Mosquitto, real subprocesses, real SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from federation.status import GatewayStatus
from federation.telemetry import LDPHeader, Reading, ReadingBatch, encode_batch, readings_topic

HEADER = LDPHeader(mechanism="hybrid", epsilon=4.0, lo=40.0, hi=400.0)
DEVICES = ("gw-1-dev001", "gw-1-dev002")
BATCHES, PER_BATCH = 150, 4  # per device
T0 = 1_767_225_600


def start_gateway(broker, state: Path, devices_file: Path, extra: list[str] = ()) -> subprocess.Popen:  # noqa: ANN001
    return subprocess.Popen([sys.executable, "-m", "federation.cli", "gateway", "ingest", "--id", "gw-1",
                             "--state-dir", str(state), "--broker-port", str(broker.port), "--devices-file",
                             str(devices_file), "--log-level", "warning", *extra],
                            stdout=subprocess.DEVNULL, stderr=open(state.parent / "gw.log", "ab"))


def subscribed_gateway(broker, tmp_path: Path) -> tuple[Path, Path, subprocess.Popen]:  # noqa: ANN001
    """A gateway gw-1 for DEVICES on a fresh state directory, once it has subscribed: (state, devices file, process)."""
    state = tmp_path / "gw-1"
    state.mkdir()
    devices_file = tmp_path / "devices.txt"
    devices_file.write_text("# provisioned to gw-1\n" + "\n".join(DEVICES) + "\n")
    gw = start_gateway(broker, state, devices_file)
    try:
        wait(lambda: status(state).get("subscribed"), "the gateway to subscribe")
    except AssertionError:
        gw.kill()
        gw.wait()
        raise
    return state, devices_file, gw


def publisher(broker) -> mqtt.Client:  # noqa: ANN001
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{time.time_ns()}")
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    return pub


def status(state: Path) -> dict:
    try:
        return json.loads((state / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def wait(cond, what: str, timeout: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def stored(state: Path) -> int:
    with sqlite3.connect(state / "readings.sqlite", timeout=10) as db:
        return db.execute("SELECT COUNT(*) FROM readings").fetchone()[0]


def batch(device: str, b: int) -> bytes:
    readings = tuple(Reading(seq=s, t=T0 + 300 * s, value=100.0 + (s % 50) + (device == DEVICES[1]))
                     for s in range(b * PER_BATCH, (b + 1) * PER_BATCH))
    return encode_batch(ReadingBatch(epoch=1, device=device, ldp=HEADER, readings=readings))


def test_kill_9_mid_stream_loses_nothing_acknowledged(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    state, devices_file, gw = subscribed_gateway(mosquitto, tmp_path)
    try:
        pub = publisher(mosquitto)
        accepted = {d: 0 for d in DEVICES}  # readings the broker acknowledged to the publisher

        def publish_all() -> None:
            for b in range(BATCHES):
                for d in DEVICES:
                    info = pub.publish(readings_topic("gw-1", d), batch(d, b), qos=1)
                    info.wait_for_publish(timeout=10)
                    assert info.is_published()
                    accepted[d] += PER_BATCH
                if b == 40:  # hostile input mid-stream: garbage and an unprovisioned device
                    pub.publish(readings_topic("gw-1", DEVICES[0]), b"\x00garbage", qos=1).wait_for_publish(10)
                    pub.publish(readings_topic("gw-1", "gw-1-rogue"), batch("gw-1-rogue", 0), qos=1)
                time.sleep(0.002)

        sender = threading.Thread(target=publish_all)
        sender.start()
        wait(lambda: stored(state) >= 300, "some readings to be stored before the kill")
        os.kill(gw.pid, signal.SIGKILL)  # a real crash: no handler runs, nothing is flushed
        gw.wait(timeout=10)
        at_kill = stored(state)
        sender.join(timeout=60)
        assert not sender.is_alive()
        total = sum(accepted.values())
        assert total == len(DEVICES) * BATCHES * PER_BATCH
        assert at_kill < total, "the kill came too late to test anything"

        gw = start_gateway(mosquitto, state, devices_file)  # restart on the same state directory
        wait(lambda: status(state).get("ingested") == total, f"all {total} readings after the restart")
        time.sleep(0.5)  # anything redelivered late must still not add rows
        pub.loop_stop()
        pub.disconnect()

        with sqlite3.connect(state / "readings.sqlite") as db:
            rows = db.execute("SELECT device, seq, t, value FROM readings ORDER BY device, seq").fetchall()
        assert len(rows) == total  # nothing lost, nothing twice
        for d in DEVICES:
            seqs = [r[1] for r in rows if r[0] == d]
            assert seqs == list(range(BATCHES * PER_BATCH))
        assert all(v == 100.0 + (s % 50) + (dev == DEVICES[1]) for dev, s, _t, v in rows)
        final = status(state)
        assert final["rejected"] == 2 and final["devices"] == 2
        with sqlite3.connect(state / "readings.sqlite") as db:
            reasons = [r for (r,) in db.execute("SELECT reason FROM quarantine")]
        assert any("unknown device 'gw-1-rogue'" in r for r in reasons) and any("not a map" in r for r in reasons)

        gw.send_signal(signal.SIGTERM)  # graceful stop: exit 0 and a final status
        assert gw.wait(timeout=15) == 0
        assert status(state).get("stopped") is True
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait()


def test_a_running_gateways_status_file_is_the_typed_document(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    state, _devices_file, gw = subscribed_gateway(mosquitto, tmp_path)
    try:
        pub = publisher(mosquitto)
        for b in range(3):
            pub.publish(readings_topic("gw-1", DEVICES[0]), batch(DEVICES[0], b), qos=1).wait_for_publish(10)
        pub.publish(readings_topic("gw-1", DEVICES[1]), b"\x00garbage", qos=1).wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
        wait(lambda: status(state).get("ingested") == 3 * PER_BATCH and status(state).get("rejected") == 1,
             "the readings and the quarantined message in the status")

        doc = status(state)
        live = GatewayStatus.model_validate(doc)  # what a real `gateway ingest` writes is the model's document
        assert live.model_dump(mode="json") == doc  # and reads back to the same keys and values
        assert live.kind == "gateway" and live.pid == gw.pid and live.healthy and live.ingest.state == "ok"
        assert (live.ingested, live.devices, live.rejected, live.registry_devices) == (3 * PER_BATCH, 1, 1, 2)
        assert live.consent.withdrawn_devices == 0 and live.retention.runs >= 0
        assert live.node is None and live.relay is None and live.acl_watch is None  # ingest only: no federation
        assert not {"enrolled", "privacy", "model_relayed", "stopped"} & set(doc)

        gw.send_signal(signal.SIGTERM)
        assert gw.wait(timeout=15) == 0
        assert GatewayStatus.model_validate(status(state)).stopped is True
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait()
