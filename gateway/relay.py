"""Model relay: fetch the cloud's current signed release (the promoted model), verify it, and re-publish it to
this gateway's devices on the retained topic ``wearfed/v1/<gateway>/model`` (QoS 1).

The cloud is asked after every round it reports completed (a promotion usually follows aggregation) and
otherwise every CHECK_SECONDS, since a promotion or a rollback may come at any time. The payload is the release
document exactly as the cloud serves it (`federation.release`), as JSON, so a device verifies the same
signature the gateway did. The release key is pinned: `--release-key`, else trust on first use (stored in
`<state-dir>/release-key.pub`); a later change of key is refused, never followed silently. A missing release
(404 or 409: nothing promoted yet, or a cloud that does not serve releases) is logged and asked again later.

The signed TFLite artifact (`federation.release.verify_tflite_release`, GET /v1/releases/current/tflite) is
added to the payload under ``tflite`` once the cloud has exported it, after the gateway verified it against the
same pinned key and checked it is the same model version; until then (409: export pending, litert-torch
missing) the release goes out without it and is published again, with it, when it appears (a new release
serial, e.g. after a rollback, is published again too).

The relay publishes as its own principal (`BrokerAccess`: ``gateway-<gw>-relay`` from `wearfed provision`, client id
the same), never with the ingest's login: on a broker with ``use_username_as_clientid`` that login is the ingest's
client id, and a clean-session publish under it would take over and discard the ingest's persistent session
(readings the broker had acknowledged to devices would be lost). Over TLS when its access says so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from federation import model
from federation.errors import SchemaError, SignatureError, WearfedError
from federation.release import verify_release, verify_tflite_release
from federation.responses import PublicRound, ReleaseKey
from federation.runtime import atomic_write_json, atomic_write_text
from federation.telemetry import model_topic
from gateway.cloud_client import CloudClient, CloudRejected
from gateway.ingest import BrokerAccess

log = logging.getLogger(__name__)
CHECK_SECONDS = 10.0
PENDING_CHECK_SECONDS = 1.0  # while the promoted version's TFLite artifact is being exported: ask again soon
CURRENT_RELEASE = "/v1/releases/current"
CURRENT_TFLITE = "/v1/releases/current/tflite"


class RelayError(WearfedError):
    """A release could not be verified or published; the message says which check failed."""


def relay_client_id(gateway: str, access: BrokerAccess) -> str:
    """The relay's own client id: its username (what `use_username_as_clientid` makes it anyway), else a fixed one."""
    return access.username or f"gateway-{gateway}-relay"


def publish_retained(*, access: BrokerAccess, topic: str, payload: bytes, client_id: str,
                     timeout: float = 10.0) -> None:
    """Publish one retained QoS 1 message and wait for the broker's PUBACK."""
    host, port = access.host, access.port
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    access.configure(client)
    try:
        client.connect(host, port, keepalive=30)
        client.loop_start()
        info = client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(timeout=timeout)
        if not info.is_published():
            raise RelayError(f"broker did not acknowledge the retained model on {topic} within {timeout}s")
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise RelayError(f"cannot publish to {host}:{port}: {exc}") from exc
    finally:
        client.disconnect()
        client.loop_stop()


class ModelRelay:
    def __init__(self, gateway: str, state_dir: Path, *, host: str = "127.0.0.1", port: int = 1883,
                 username: str | None = None, password: str | None = None, release_key: str | None = None,
                 access: BrokerAccess | None = None) -> None:
        """`access` (the relay's own principal and TLS) wins over the plain host/port/username/password keywords."""
        self.access = access or BrokerAccess(host=host, port=port, username=username, password=password)
        self.gateway, self.host, self.port = gateway, self.access.host, self.access.port
        self._pin_path = state_dir / "release-key.pub"
        self._state_path = state_dir / "relay.json"
        self.pinned_key = release_key or (self._pin_path.read_text().strip() if self._pin_path.exists() else None)
        doc = json.loads(self._state_path.read_text()) if self._state_path.exists() else {}
        self.relayed_version: int | None = doc.get("version")
        self.relayed_serial: int | None = doc.get("tflite_serial")
        self.last_error: str | None = None
        self.tflite_error: str | None = None
        self._next_check = 0.0
        self._last_completed: int | None = None
        self._tflite_pending = False  # the cloud said the artifact is being exported (409 "ask again")

    def status(self) -> dict:
        return {"model_relayed": self.relayed_version, "relay_error": self.last_error,
                "tflite_relayed_serial": self.relayed_serial, "tflite_error": self.tflite_error}

    async def after_round(self, rnd: PublicRound | None, cloud: CloudClient) -> None:
        """Hook for the participant loop: check for a new release after a completed round, else periodically."""
        done = rnd is not None and rnd.state == "completed" and rnd.round != self._last_completed
        if not done and time.monotonic() < self._next_check:
            return
        if rnd is not None and done:
            self._last_completed = rnd.round
        self._next_check = time.monotonic() + CHECK_SECONDS
        try:
            await self.relay_current(cloud)
            if self._tflite_pending:
                self._next_check = time.monotonic() + PENDING_CHECK_SECONDS
        except (CloudRejected, RelayError, SchemaError, SignatureError) as exc:
            self.last_error = str(exc)
            log.warning("%s: no model relayed (%s); asking again in %.0fs", self.gateway, exc, CHECK_SECONDS)

    async def release_key(self, cloud: CloudClient) -> str:
        try:
            served = ReleaseKey.model_validate((await cloud.request("GET", "/v1/release-key")).json()).public_key
        except ValueError as exc:  # not JSON, or not a release key (pydantic's ValidationError is a ValueError)
            raise RelayError(f"cloud served no release key ({exc})") from None
        if not served:
            raise RelayError("cloud served no release key")
        if self.pinned_key is None:
            atomic_write_text(self._pin_path, served + "\n")
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
        tflite = await self.current_tflite(cloud, key, manifest.version)
        serial = tflite["manifest"]["serial"] if tflite else None
        if manifest.version == self.relayed_version and serial in (None, self.relayed_serial):
            self.last_error = None
            return
        if manifest.architecture != model.ARCHITECTURE or len(weights) != 4 * model.N_PARAMS:
            raise RelayError(f"release {manifest.version} is {manifest.architecture} with {len(weights)} bytes, "
                             f"expected {model.ARCHITECTURE} with {4 * model.N_PARAMS}")
        if tflite is not None:
            release = {**release, "tflite": tflite}
        payload = json.dumps(release, sort_keys=True, separators=(",", ":")).encode()
        await asyncio.to_thread(publish_retained, access=self.access, topic=model_topic(self.gateway),
                                payload=payload, client_id=relay_client_id(self.gateway, self.access))
        self.relayed_version, self.relayed_serial, self.last_error = manifest.version, serial, None
        atomic_write_json(self._state_path, {"version": manifest.version, "tflite_serial": serial,
                                             "published_at": time.time()})
        log.info("%s: relayed signed model %s (TFLite release %s) to %s (retained)", self.gateway, manifest.version,
                 serial, model_topic(self.gateway))

    async def current_tflite(self, cloud: CloudClient, key: str, version: int) -> dict | None:
        """The cloud's signed TFLite release of `version`, verified; None (reason in tflite_error) if there is none."""
        self._tflite_pending = False
        try:
            doc = (await cloud.request("GET", CURRENT_TFLITE)).json()
        except CloudRejected as exc:
            self.tflite_error = str(exc)
            self._tflite_pending = exc.status == 409 and "ask again" in exc.reason
            return None
        except (httpx.HTTPError, ValueError) as exc:  # a 5xx after retries, or a body that is not JSON
            self.tflite_error = f"TFLite release unavailable: {exc}"
            log.warning("%s: %s", self.gateway, self.tflite_error)
            return None
        try:
            tfl, _ = verify_tflite_release(doc, key)
        except (SchemaError, SignatureError) as exc:
            self.tflite_error = f"TFLite release refused: {exc}"
            log.warning("%s: %s", self.gateway, self.tflite_error)
            return None
        if tfl.version != version:
            self.tflite_error = f"TFLite release is of v{tfl.version}, the promoted release is v{version}"
            return None
        self.tflite_error = None
        return doc
