"""MQTT ingest: subscribe to the gateway's devices, validate every batch, store it, quarantine the rest.

Durability: a QoS 1 message is acknowledged (PUBACK) only after its batch, or its quarantine record, is
committed to SQLite. paho-mqtt 2 with `manual_ack=True` makes that possible (aiomqtt acknowledges on receipt).
The session is persistent (clean_session=False, fixed client id), so after a crash or `kill -9` the broker
redelivers every unacknowledged message; the (device, seq) primary key drops what was stored but not yet
acknowledged, so nothing acknowledged is lost and nothing is counted twice. If the store fails (disk full),
the message is not acknowledged and the client reconnects to get it again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from federation.errors import SchemaError
from federation.telemetry import TOPIC_ROOT, ReadingBatch, decode_batch
from gateway.registry import DeviceRegistry
from gateway.store import ReadingStore

log = logging.getLogger(__name__)
EARLIEST_TIMESTAMP = 946_684_800  # 2000-01-01T00:00:00Z: no CGM reading is older
DEFAULT_MAX_FUTURE_S = 30 * 86400  # simulated clocks may run ahead of the wall clock; beyond this, garbage


def check_batch(batch: ReadingBatch, *, registry: DeviceRegistry | None, now: float, max_future_s: float) -> None:
    """Gateway-side checks past the schema: known device, plausible and consistent timestamps."""
    if registry is not None and batch.device not in registry:
        raise SchemaError(f"unknown device {batch.device!r} (not in the gateway's device registry)")
    prev = None
    for r in batch.readings:
        if not EARLIEST_TIMESTAMP <= r.t <= now + max_future_s:
            raise SchemaError(f"timestamp {r.t} of seq {r.seq} outside [{EARLIEST_TIMESTAMP}, now + {max_future_s:g}s]")
        if prev is not None and not (r.seq > prev.seq and r.t >= prev.t):
            raise SchemaError(f"readings not in order: seq {prev.seq}@{prev.t} then {r.seq}@{r.t}")
        prev = r


def handle_message(store: ReadingStore, gateway: str, topic: str, payload: bytes, *,
                   registry: DeviceRegistry | None = None, now: float | None = None,
                   max_future_s: float = DEFAULT_MAX_FUTURE_S) -> str:
    """Validate and store one message; returns "stored", "duplicate" or "rejected: <reason>".

    Never raises on bad input; raises sqlite3.Error only if the store itself fails (then nothing is acknowledged).
    """
    parts = topic.split("/")
    try:
        if len(parts) != 5 or "/".join(parts[:2]) != TOPIC_ROOT or parts[2] != gateway or parts[4] != "readings":
            raise SchemaError(f"unexpected topic {topic!r}")
        batch = decode_batch(payload)
        if batch.device != parts[3]:
            raise SchemaError(f"payload device {batch.device!r} does not match topic device {parts[3]!r}")
        check_batch(batch, registry=registry, now=time.time() if now is None else now, max_future_s=max_future_s)
    except SchemaError as exc:
        store.quarantine(topic, payload, str(exc))
        log.warning("rejected message on %s: %s", topic, exc)
        return f"rejected: {exc}"
    except Exception as exc:  # a validator bug must not kill the daemon; keep the message for a human
        store.quarantine(topic, payload, f"internal error while validating: {exc!r}")
        log.exception("validator failed on %s", topic)
        return f"rejected: internal error {exc!r}"
    new, _dup = store.add_batch(batch)
    return "stored" if new else "duplicate"


class MqttIngest:
    """One paho client (its own network thread) that stores, then acknowledges, each QoS 1 message."""

    def __init__(self, store: ReadingStore, gateway: str, *, host: str, port: int, username: str | None = None,
                 password: str | None = None, registry: DeviceRegistry | None = None,
                 max_future_s: float = DEFAULT_MAX_FUTURE_S, on_ready: Callable[[], None] | None = None) -> None:
        self.store, self.gateway, self.registry, self.max_future_s = store, gateway, registry, max_future_s
        self.host, self.port = host, port
        self.failed = threading.Event()  # the store failed: reconnect to have unacknowledged messages redelivered
        self._on_ready = on_ready
        self._topic = f"{TOPIC_ROOT}/{gateway}/+/readings"
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"gateway-{gateway}", clean_session=False,
                                   manual_ack=True)
        if username:
            self._client.username_pw_set(username, password)
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_disconnect = self._on_disconnect

    def start(self) -> None:
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect cleanly; a message being stored finishes first (loop_stop joins the network thread)."""
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _userdata, _flags, reason_code, _props) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            log.warning("gateway %s: broker refused connection: %s", self.gateway, reason_code)
            return
        client.subscribe(self._topic, qos=1)

    def _on_subscribe(self, _client, _userdata, _mid, reason_codes, _props) -> None:  # noqa: ANN001
        if any(rc.is_failure for rc in reason_codes):
            log.error("gateway %s: subscription to %s refused: %s", self.gateway, self._topic, reason_codes)
            return
        log.info("gateway %s: subscribed to %s (QoS 1, persistent session)", self.gateway, self._topic)
        if self._on_ready is not None:
            self._on_ready()

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _props) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            log.warning("gateway %s: broker connection lost (%s); paho reconnects", self.gateway, reason_code)

    def _on_message(self, client: mqtt.Client, _userdata, message: mqtt.MQTTMessage) -> None:  # noqa: ANN001
        if self.failed.is_set():
            return  # not acknowledged: redelivered after the reconnect
        try:
            handle_message(self.store, self.gateway, message.topic, bytes(message.payload), registry=self.registry,
                           max_future_s=self.max_future_s)
        except Exception:  # sqlite3.Error (disk full, I/O) or a bug: never kill paho's network thread
            log.exception("gateway %s: store failed; message %s not acknowledged", self.gateway, message.mid)
            self.failed.set()
            return
        if message.qos > 0:
            client.ack(message.mid, message.qos)


async def ingest_forever(store: ReadingStore, gateway: str, *, host: str, port: int, username: str | None = None,
                         password: str | None = None, ready: asyncio.Event | None = None,
                         registry: DeviceRegistry | None = None,
                         max_future_s: float = DEFAULT_MAX_FUTURE_S) -> None:
    """Run the ingest until cancelled; after a store failure, reconnect with backoff for redelivery."""
    loop = asyncio.get_running_loop()
    on_ready = (lambda: loop.call_soon_threadsafe(ready.set)) if ready is not None else None
    backoff = 0.5
    while True:
        ingest = MqttIngest(store, gateway, host=host, port=port, username=username, password=password,
                            registry=registry, max_future_s=max_future_s, on_ready=on_ready)
        ingest.start()
        try:
            while not ingest.failed.is_set():
                await asyncio.sleep(0.2)
        finally:
            await asyncio.to_thread(ingest.stop)
        log.warning("gateway %s: reconnecting in %.1fs after a store failure", gateway, backoff)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 30.0)
