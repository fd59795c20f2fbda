"""Model relay against a real uvicorn app serving signed releases and a real Mosquitto: verify, then publish.

The cloud's release endpoints are served here by a tiny FastAPI app (so that misbehaviour can be switched per
test); it signs real releases with `federation.release.make_release`, as the cloud does.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI, HTTPException
from paho.mqtt.enums import CallbackAPIVersion

from federation import model
from federation.release import ReleaseManifest, make_release, verify_release
from federation.responses import PublicRound
from federation.signing import public_key_b64
from federation.telemetry import model_topic
from gateway.cloud_client import CloudClient
from gateway.relay import ModelRelay
from tests.conftest import serve_app


class FakeCloud:
    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.served_key = public_key_b64(self.key)
        self.releases: dict[int, dict] = {}
        self.current: int | None = None  # the promoted version
        self.requests = 0

    def add(self, version: int, *, signer: Ed25519PrivateKey | None = None, tamper: bool = False) -> np.ndarray:
        weights = model.init_weights(seed=version)
        raw = weights.tobytes()
        manifest = ReleaseManifest(version=version, architecture=model.ARCHITECTURE, model_hash="h" * 64,
                                   weights_sha256=hashlib.sha256(raw).hexdigest(), created_at="2026-01-01T00:00:00Z",
                                   round=version)
        rel = make_release(manifest, raw, signer or self.key)
        if tamper:
            rel["manifest"] = {**rel["manifest"], "round": 999}
        self.releases[version] = rel
        self.current = version
        return weights

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/release-key")
        def release_key() -> dict:
            return {"public_key": self.served_key, "algorithm": "Ed25519"}  # the contract: federation.responses

        @app.get("/v1/releases/current")
        def release() -> dict:
            self.requests += 1
            if self.current is None:
                raise HTTPException(404, "no model has been promoted yet")
            return self.releases[self.current]

        return app


@pytest.fixture
def fake_cloud():  # noqa: ANN201
    cloud = FakeCloud()
    with serve_app(cloud.app()) as cloud.url:
        yield cloud


def retained(broker, topic: str, timeout: float = 3.0) -> bytes | None:  # noqa: ANN001
    """Subscribe as a device that connects late: return the retained message, if any."""
    got: list[bytes] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{time.time_ns()}")
    client.on_message = lambda _c, _u, msg: got.append(msg.payload) if msg.retain else None
    client.connect(broker.host, broker.port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    deadline = time.time() + timeout
    while not got and time.time() < deadline:
        time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    return got[0] if got else None


def completed(version: int) -> PublicRound:
    return PublicRound(round=version, state="completed", quorum=3, expected=[], base_model_version=version - 1,
                       local_epochs=1, data_cutoff=None, deadline_at="2026-01-01T00:00:00+00:00",
                       result_model_version=version)


def test_relay_verifies_then_publishes_retained_and_tolerates_404(fake_cloud, mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    relay = ModelRelay("gw-1", tmp_path, host=mosquitto.host, port=mosquitto.port)

    async def scenario() -> None:
        cloud = CloudClient(fake_cloud.url, attempts=2)
        await relay.after_round(completed(1), cloud)  # nothing promoted yet: logged, asked later, nothing published
        assert relay.relayed_version is None and "404" in relay.status()["relay_error"]
        await relay.after_round(completed(1), cloud)  # same round, inside the check interval: not asked again
        assert fake_cloud.requests == 1
        fake_cloud.add(1)
        weights = fake_cloud.add(2)  # promoted after round 2
        await relay.after_round(completed(2), cloud)
        assert relay.relayed_version == 2 and relay.status()["relay_error"] is None
        payload = retained(mosquitto, model_topic("gw-1"))
        assert payload is not None
        manifest, raw = verify_release(json.loads(payload), fake_cloud.served_key)  # what a device does
        assert manifest.version == 2 and np.array_equal(np.frombuffer(raw, dtype=np.float32), weights)
        fake_cloud.current = 1  # a rollback: devices must get version 1 again
        await relay.after_round(completed(3), cloud)
        await cloud.aclose()
        assert relay.relayed_version == 1
        assert json.loads(retained(mosquitto, model_topic("gw-1")))["manifest"]["version"] == 1

    asyncio.run(scenario())
    # the pinned key and the relayed version survive a restart
    again = ModelRelay("gw-1", tmp_path, host=mosquitto.host, port=mosquitto.port)
    assert again.relayed_version == 1 and again.pinned_key == fake_cloud.served_key


@pytest.mark.parametrize("attack", ["wrong-signer", "tampered-manifest", "key-swapped"])
def test_bad_releases_are_never_published(fake_cloud, mosquitto, tmp_path: Path, attack: str) -> None:  # noqa: ANN001
    relay = ModelRelay("gw-1", tmp_path, host=mosquitto.host, port=mosquitto.port)

    async def scenario() -> None:
        cloud = CloudClient(fake_cloud.url, attempts=2)
        fake_cloud.add(1)
        await relay.after_round(completed(1), cloud)  # a good release pins the key
        assert relay.relayed_version == 1
        if attack == "wrong-signer":
            fake_cloud.add(3, signer=Ed25519PrivateKey.generate())
        elif attack == "tampered-manifest":
            fake_cloud.add(3, tamper=True)
        else:  # the cloud (or someone in the middle) now serves another key and releases signed by it
            other = Ed25519PrivateKey.generate()
            fake_cloud.served_key = public_key_b64(other)
            fake_cloud.add(3, signer=other)
        await relay.after_round(completed(3), cloud)
        await cloud.aclose()

    asyncio.run(scenario())
    assert relay.relayed_version == 1
    assert relay.status()["relay_error"]
    payload = retained(mosquitto, model_topic("gw-1"))
    assert json.loads(payload)["manifest"]["version"] == 1  # devices still see the last good model
