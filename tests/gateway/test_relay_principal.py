"""Issue 14 item 2 on a provisioned Mosquitto (password file, ACL, `use_username_as_clientid`): the model relay
publishes as its own principal, so releases flowing never cost the ingest an acknowledged reading.

Real Mosquitto with the files `wearfed provision` writes, a real `wearfed gateway ingest` subprocess logged in
from the credentials file, a device publishing with its own login, and the real `ModelRelay` configured through
the gateway's command line (`--credentials`), fetching ten signed releases from a FastAPI app under uvicorn.
Before the fix the relay logged in as the gateway's user: the broker made its clean session the ingest's
client id, took over the ingest's persistent session and discarded its queue (1,080 readings acknowledged,
830 stored in the issue).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from device.provision import load_credentials
from federation.cli import build_parser, main
from federation.telemetry import LDPHeader, Reading, ReadingBatch, encode_batch, model_topic, readings_topic
from gateway.cli import _ingest_config
from gateway.cloud_client import CloudClient
from gateway.relay import ModelRelay
from sim.broker import free_port, start_mosquitto, wait_for_port
from tests.conftest import serve_app
from tests.gateway.test_ingest_crash import status, wait
from tests.gateway.test_relay import FakeCloud

DEV = "gw-1-dev001"
T0 = 1_767_225_600
BATCHES, PER_BATCH, RELEASES = 270, 4, 10


def provisioned_broker(tmp_path: Path, *extra: str):  # noqa: ANN201
    out = tmp_path / "prov"
    tls_port = free_port()
    assert main(["provision", "--out", str(out), "--gateways", "gw-1", "--devices-per-gateway", "2",
                 "--tls-port", str(tls_port), "--client-certs", *extra]) == 0
    broker = start_mosquitto(free_port(), tmp_path / "mq", extra=(out / "mosquitto-auth.conf").read_text())
    wait_for_port("127.0.0.1", tls_port)
    return broker, out, tls_port


def start_ingest(state: Path, port: int, argv: list[str]):  # noqa: ANN201
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "federation.cli", "gateway", "ingest", "--id", "gw-1",
                             "--state-dir", str(state), "--broker-port", str(port), "--log-level", "warning", *argv],
                            stdout=subprocess.DEVNULL, stderr=open(state.parent / "gw.log", "ab"))


def device_client(out: Path, port: int, **tls: object) -> mqtt.Client:
    d = load_credentials(out / "credentials.json")[DEV]
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=DEV, clean_session=False)
    c.username_pw_set(d["username"], d["password"])
    if tls:
        c.tls_set(**tls)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def batch(b: int) -> bytes:
    rows = tuple(Reading(s, T0 + 300 * s, 100.0 + s % 50) for s in range(b * PER_BATCH, (b + 1) * PER_BATCH))
    return encode_batch(ReadingBatch(device=DEV, epoch=7, ldp=LDPHeader("hybrid", 8.0, 40.0, 400.0), readings=rows))


def stream_while_releasing(dev: mqtt.Client, relay: ModelRelay, cloud: FakeCloud) -> int:
    """Publish every batch (each acknowledged by the broker) while the relay publishes RELEASES releases."""
    acked = 0
    done = threading.Event()

    def device() -> None:
        nonlocal acked
        for b in range(BATCHES):
            info = dev.publish(readings_topic("gw-1", DEV), batch(b), qos=1)
            info.wait_for_publish(timeout=10)
            assert info.is_published()
            acked += PER_BATCH
            time.sleep(0.004)
        done.set()

    async def releases() -> None:
        client = CloudClient(cloud.url, attempts=2)
        for v in range(1, RELEASES + 1):
            cloud.add(v)
            await relay.relay_current(client)
            await asyncio.sleep(0.1)
        await client.aclose()

    t = threading.Thread(target=device)
    t.start()
    asyncio.run(releases())
    t.join(timeout=120)
    assert done.is_set()
    return acked


def test_releases_flow_without_losing_an_acknowledged_reading(tmp_path: Path) -> None:
    broker, out, _ = provisioned_broker(tmp_path)
    state = tmp_path / "gw-1"
    state.mkdir()
    argv = ["--credentials", str(out / "credentials.json")]
    gw = start_ingest(state, broker.port, argv)
    cloud = FakeCloud()
    dev = None
    try:
        with serve_app(cloud.app()) as cloud.url:
            wait(lambda: status(state).get("subscribed"), "the gateway to subscribe")
            args = build_parser().parse_args(["gateway", "ingest", "--id", "gw-1", "--state-dir", str(state),
                                              "--broker-port", str(broker.port), *argv])
            cfg = _ingest_config(args)  # the relay's access as the gateway daemon builds it
            assert cfg.relay_access().username == "gateway-gw-1-relay" != cfg.ingest_access().username
            relay = ModelRelay("gw-1", tmp_path / "relay", access=cfg.relay_access())
            dev = device_client(out, broker.port)
            acked = stream_while_releasing(dev, relay, cloud)
        assert acked == BATCHES * PER_BATCH == 1080 and relay.relayed_version == RELEASES
        wait(lambda: status(state).get("ingested") == acked, f"all {acked} acknowledged readings", timeout=30)
        with sqlite3.connect(state / "readings.sqlite") as db:
            assert [s for (s,) in db.execute("SELECT seq FROM readings ORDER BY seq")] == list(range(acked))
        got: list[bytes] = []  # devices see the last release, retained
        d2 = load_credentials(out / "credentials.json")["gw-1-dev002"]
        reader = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gw-1-dev002")
        reader.username_pw_set(d2["username"], d2["password"])
        reader.on_message = lambda _c, _u, m: got.append(m.payload)
        reader.connect("127.0.0.1", broker.port)
        reader.subscribe(model_topic("gw-1"), qos=1)
        reader.loop_start()
        wait(lambda: bool(got), "the retained release")
        reader.loop_stop()
        assert json.loads(got[0])["manifest"]["version"] == RELEASES
    finally:
        if dev is not None:
            dev.loop_stop()
            dev.disconnect()
        gw.terminate()
        gw.wait(timeout=15)
        broker.stop()
