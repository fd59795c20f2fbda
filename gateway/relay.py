"""Model relay: fetch the cloud's current signed release (the promoted model), verify it, and re-publish it to
this gateway's devices on the retained topic ``wearfed/v1/<gateway>/model`` (QoS 1).

The cloud is asked after every round it reports completed (a promotion usually follows aggregation) and
otherwise every CHECK_SECONDS, since a promotion or a rollback may come at any time. The payload is the release
document exactly as the cloud serves it (`federation.release`), as JSON, so a device verifies the same
signature the gateway did. The release key is pinned: `--release-key`, else trust on first use (stored in
`<state-dir>/release-key.pub`); a later change of key is refused, never followed silently. A missing release
(404 or 409: nothing promoted yet, or a cloud that does not serve releases) is logged and asked again later.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from federation import model
from federation.errors import SchemaError, SignatureError, WearfedError
from federation.release import verify_release
from federation.telemetry import TOPIC_ROOT
from gateway.cloud_client import CloudClient, CloudRejected

log = logging.getLogger(__name__)
CHECK_SECONDS = 10.0
CURRENT_RELEASE = "/v1/releases/current"


class RelayError(WearfedError):
    """A release could not be verified or published; the message says which check failed."""


def model_topic(gateway: str) -> str:
    return f"{TOPIC_ROOT}/{gateway}/model"


def publish_retained(*, host: str, port: int, topic: str, payload: bytes, client_id: str,
                     username: str | None = None, password: str | None = None, timeout: float = 10.0) -> None:
    """Publish one retained QoS 1 message and wait for the broker's PUBACK."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    if username:
        client.username_pw_set(username, password)
    try:
        client.connect(host, port, keepalive=30)
        client.loop_start()
        info = client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(timeout=timeout)
        if not info.is_published():
            raise RelayError(f"broker did not acknowledge the retained model on {topic} within {timeout}s")
    except OSError as exc:
        raise RelayError(f"cannot publish to {host}:{port}: {exc}") from exc
    finally:
        client.disconnect()
        client.loop_stop()


class ModelRelay:
    def __init__(self, gateway: str, state_dir: Path, *, host: str, port: int, username: str | None = None,
                 password: str | None = None, release_key: str | None = None) -> None:
        self.gateway, self.host, self.port = gateway, host, port
        self._auth = (username, password)
        self._pin_path = state_dir / "release-key.pub"
        self._state_path = state_dir / "relay.json"
        self.pinned_key = release_key or (self._pin_path.read_text().strip() if self._pin_path.exists() else None)
        doc = json.loads(self._state_path.read_text()) if self._state_path.exists() else {}
        self.relayed_version: int | None = doc.get("version")
        self.last_error: str | None = None
        self._next_check = 0.0
        self._last_completed: int | None = None

    def status(self) -> dict:
        return {"model_relayed": self.relayed_version, "relay_error": self.last_error}

    async def after_round(self, rnd: dict, cloud: CloudClient) -> None:
        """Hook for the participant loop: check for a new release after a completed round, else periodically."""
        done = rnd.get("state") == "completed" and rnd.get("round") != self._last_completed
        if not done and time.monotonic() < self._next_check:
            return
        if done:
            self._last_completed = rnd.get("round")
        self._next_check = time.monotonic() + CHECK_SECONDS
        try:
            await self.relay_current(cloud)
        except (CloudRejected, RelayError, SchemaError, SignatureError) as exc:
            self.last_error = str(exc)
            log.warning("%s: no model relayed (%s); asking again in %.0fs", self.gateway, exc, CHECK_SECONDS)

    async def release_key(self, cloud: CloudClient) -> str:
        served = (await cloud.request("GET", "/v1/release-key")).json().get("public_key")
        if not isinstance(served, str) or not served:
            raise RelayError("cloud served no release key")
        if self.pinned_key is None:
            self._pin_path.parent.mkdir(parents=True, exist_ok=True)
            self._pin_path.write_text(served + "\n")
            self.pinned_key = served
            log.info("%s: pinned release key %s (trust on first use)", self.gateway, served)
        elif served != self.pinned_key:
            raise RelayError(f"cloud serves release key {served}, pinned key is {self.pinned_key}: refusing")
        return self.pinned_key

    async def relay_current(self, cloud: CloudClient) -> None:
        """Fetch the current release; if it is not the one relayed last, verify it and publish it."""
        key = await self.release_key(cloud)
        release = (await cloud.request("GET", CURRENT_RELEASE)).json()
        manifest, weights = verify_release(release, key)
        if manifest.version == self.relayed_version:
            self.last_error = None
            return
        if manifest.architecture != model.ARCHITECTURE or len(weights) != 4 * model.N_PARAMS:
            raise RelayError(f"release {manifest.version} is {manifest.architecture} with {len(weights)} bytes, "
                             f"expected {model.ARCHITECTURE} with {4 * model.N_PARAMS}")
        payload = json.dumps(release, sort_keys=True, separators=(",", ":")).encode()
        user, password = self._auth
        await asyncio.to_thread(publish_retained, host=self.host, port=self.port, topic=model_topic(self.gateway),
                                payload=payload, client_id=f"gateway-{self.gateway}-relay", username=user,
                                password=password)
        self.relayed_version, self.last_error = manifest.version, None
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": manifest.version, "published_at": time.time()}))
        tmp.replace(self._state_path)
        log.info("%s: relayed signed model %s to %s (retained)", self.gateway, manifest.version,
                 model_topic(self.gateway))
