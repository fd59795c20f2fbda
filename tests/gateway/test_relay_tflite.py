"""The relay adds the cloud's signed TFLite artifact to the retained model payload once it exists, verified first."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from fastapi import HTTPException

from device.model_client import check_release
from federation.telemetry import model_topic
from gateway.cloud_client import CloudClient
from gateway.relay import ModelRelay
from tests.conftest import serve_app
from tests.device.releases import bit_flipped, release_doc
from tests.gateway.test_relay import FakeCloud, completed, retained


class TFLiteCloud(FakeCloud):
    """FakeCloud plus GET /v1/releases/current/tflite (409 until `tflite` is set)."""

    def __init__(self) -> None:
        super().__init__()
        self.tflite: dict | None = None

    def app(self):  # noqa: ANN201
        app = super().app()

        @app.get("/v1/releases/current/tflite")
        def tflite() -> dict:
            if self.tflite is None:
                raise HTTPException(409, "the TFLite artifact of model v1 (release 1) is being exported; ask again")
            return self.tflite

        return app


@pytest.fixture
def tflite_cloud():  # noqa: ANN201
    cloud = TFLiteCloud()
    with serve_app(cloud.app()) as cloud.url:
        yield cloud


def test_relay_publishes_the_verified_artifact_when_it_appears(tflite_cloud, mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    relay = ModelRelay("gw-1", tmp_path, host=mosquitto.host, port=mosquitto.port)
    topic = model_topic("gw-1")

    async def step(rnd: int) -> None:
        cloud = CloudClient(tflite_cloud.url, attempts=1)
        await relay.after_round(completed(rnd), cloud)
        await cloud.aclose()

    tflite_cloud.add(1)
    asyncio.run(step(1))  # the artifact is still being exported: the base release goes out without it
    assert relay.relayed_version == 1 and relay.relayed_serial is None and "409" in relay.status()["tflite_error"]
    assert "tflite" not in json.loads(retained(mosquitto, topic))

    tflite_cloud.tflite = bit_flipped(release_doc(tflite_cloud.key, serial=1, version=1))
    asyncio.run(step(2))  # a tampered artifact is never attached
    assert relay.relayed_serial is None and "refused" in relay.status()["tflite_error"]
    assert "tflite" not in json.loads(retained(mosquitto, topic))

    tflite_cloud.tflite = release_doc(tflite_cloud.key, serial=2, version=7)["tflite"]
    asyncio.run(step(3))  # an artifact of another version than the promoted release: not attached
    assert relay.relayed_serial is None and "v7" in relay.status()["tflite_error"]

    tflite_cloud.tflite = release_doc(tflite_cloud.key, serial=3, version=1)["tflite"]
    asyncio.run(step(4))
    assert relay.relayed_serial == 3 and relay.status()["tflite_error"] is None
    payload = retained(mosquitto, topic)
    # exactly what a device does with the retained payload
    loaded = check_release(payload, public_key=tflite_cloud.served_key, max_bytes=4_194_304)
    assert (loaded.version, loaded.serial) == (1, 3)
    again = ModelRelay("gw-1", tmp_path, host=mosquitto.host, port=mosquitto.port)
    assert again.relayed_serial == 3  # survives a restart: not published again for nothing


@pytest.mark.usefixtures("tflite_export")
def test_real_cloud_export_reaches_a_device_through_the_relay(cloud, mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    """The real aggregator exports and signs v0 when first asked; the relay attaches it; a device loads it."""
    relay = ModelRelay("gw-1", tmp_path, host=mosquitto.host, port=mosquitto.port)

    async def relay_until_attached() -> None:
        client = CloudClient(cloud.url, attempts=1)
        deadline = time.time() + 120
        while relay.relayed_serial is None and time.time() < deadline:
            await relay.relay_current(client)
            await asyncio.sleep(0.3)
        await client.aclose()

    asyncio.run(relay_until_attached())
    assert relay.relayed_serial == 1, relay.status()
    loaded = check_release(retained(mosquitto, model_topic("gw-1")), public_key=relay.pinned_key, max_bytes=4_194_304)
    assert (loaded.version, loaded.serial) == (0, 1)
