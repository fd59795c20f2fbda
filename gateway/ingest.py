"""MQTT ingest: subscribe to the gateway's devices, validate every batch, store it, quarantine the rest."""

from __future__ import annotations

import asyncio
import logging

import aiomqtt

from federation.errors import SchemaError
from federation.telemetry import TOPIC_ROOT, decode_batch
from gateway.store import ReadingStore

log = logging.getLogger(__name__)


def handle_message(store: ReadingStore, gateway: str, topic: str, payload: bytes) -> str:
    """Validate and store one message; returns "stored", "duplicate" or "rejected: <reason>". Never raises."""
    parts = topic.split("/")
    try:
        if len(parts) != 5 or "/".join(parts[:2]) != TOPIC_ROOT or parts[2] != gateway or parts[4] != "readings":
            raise SchemaError(f"unexpected topic {topic!r}")
        batch = decode_batch(payload)
        if batch.device != parts[3]:
            raise SchemaError(f"payload device {batch.device!r} does not match topic device {parts[3]!r}")
    except SchemaError as exc:
        store.quarantine(topic, payload, str(exc))
        log.warning("rejected message on %s: %s", topic, exc)
        return f"rejected: {exc}"
    new, dup = store.add_batch(batch)
    return "stored" if new else "duplicate"


async def ingest_forever(store: ReadingStore, gateway: str, *, host: str, port: int, username: str | None = None,
                         password: str | None = None, ready: asyncio.Event | None = None) -> None:
    """Subscribe (persistent session, QoS 1) and store until cancelled; reconnects with backoff."""
    backoff = 0.2
    while True:
        try:
            async with aiomqtt.Client(host, port, identifier=f"gateway-{gateway}", username=username,
                                      password=password, clean_session=False) as client:
                await client.subscribe(f"{TOPIC_ROOT}/{gateway}/+/readings", qos=1)
                backoff = 0.2
                if ready is not None:
                    ready.set()
                async for message in client.messages:
                    payload = message.payload if isinstance(message.payload, bytes) else b""
                    handle_message(store, gateway, str(message.topic), payload)
        except aiomqtt.MqttError as exc:
            log.warning("gateway %s: broker connection lost (%s); reconnecting in %.1fs", gateway, exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
