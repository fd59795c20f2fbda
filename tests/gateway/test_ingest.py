"""Gateway ingest against a real Mosquitto: valid batches stored once, bad input quarantined, daemon survives."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import cbor2

from federation.telemetry import LDPHeader, Reading, ReadingBatch, encode_batch, readings_topic
from gateway.ingest import ingest_forever
from gateway.store import ReadingStore

EVENT = {"u": "reading"}  # the privacy declaration of an event-level device
HEADER = LDPHeader(mechanism="laplace", epsilon=8.0, lo=40.0, hi=400.0)


def batch(device: str, seqs: range) -> bytes:
    readings = tuple(Reading(seq=s, t=1_767_225_600 + 300 * s, value=120.0 + s) for s in seqs)
    return encode_batch(ReadingBatch(epoch=1, device=device, ldp=HEADER, readings=readings))


async def start_ingest(store: ReadingStore, broker) -> asyncio.Task:  # noqa: ANN001
    """gw-1's real ingest loop, subscribed and ready, as a task of the running loop."""
    ready = asyncio.Event()
    task = asyncio.create_task(ingest_forever(store, "gw-1", host=broker.host, port=broker.port, ready=ready))
    await asyncio.wait_for(ready.wait(), 10)
    return task


async def _wait(predicate, timeout: float = 10.0) -> None:  # noqa: ANN001
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


def test_ingest_stores_dedups_and_quarantines(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    store = ReadingStore(tmp_path / "readings.sqlite")

    async def scenario() -> None:
        task = await start_ingest(store, mosquitto)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="gw-1-dev001") as dev:
            topic = readings_topic("gw-1", "gw-1-dev001")
            await dev.publish(topic, batch("gw-1-dev001", range(0, 5)), qos=1)
            await dev.publish(topic, batch("gw-1-dev001", range(3, 8)), qos=1)  # 3 and 4 are duplicates
            await dev.publish(topic, b"\xff\x00 not cbor", qos=1)
            await dev.publish(topic, cbor2.dumps({"v": 99}), qos=1)
            await dev.publish(topic, batch("gw-1-dev002", range(0, 2)), qos=1)  # device spoofing another's id
            bad_value = cbor2.dumps({"v": 2, "dev": "gw-1-dev001", "e": 1, "p": EVENT,
                                     "ldp": {"m": "laplace", "eps": 8, "lo": 40, "hi": 400},
                                     "r": [[99, 1_767_225_600, float("nan")]]})
            await dev.publish(topic, bad_value, qos=1)
            no_ldp = cbor2.dumps({"v": 2, "dev": "gw-1-dev001", "e": 1, "p": EVENT, "r": [[100, 1_767_225_600, 100.0]]})
            await dev.publish(topic, no_ldp, qos=1)
            await dev.publish(readings_topic("gw-2", "gw-1-dev001"), batch("gw-1-dev001", range(50, 52)), qos=1)
            await _wait(lambda: store.counts()["rejected"] >= 5)
            # the daemon is still alive: a later valid batch lands
            await dev.publish(topic, batch("gw-1-dev001", range(8, 10)), qos=1)
            await _wait(lambda: store.counts()["ingested"] >= 10)
        assert not task.done()
        task.cancel()

    asyncio.run(scenario())
    counts = store.counts()
    assert counts == {"ingested": 10, "devices": 1, "rejected": 5, "duplicates": 2, "device_resets": 0}
    reasons = [r for _t, r in store.quarantined()]
    assert any("not CBOR" in r for r in reasons)
    assert any("schema version" in r for r in reasons)
    assert any("does not match topic" in r for r in reasons)
    assert any("finite" in r for r in reasons)
    assert any("LDP header missing" in r for r in reasons)
    series = store.series()["gw-1-dev001"]
    values = series.glucose
    assert list(values) == [120.0 + s for s in range(10)]


class FlakyStore(ReadingStore):
    """A store whose first write fails as a full disk would (sqlite3.OperationalError)."""

    failures = 1

    def add_batch(self, batch):  # noqa: ANN001, ANN201
        if self.failures:
            self.failures -= 1
            import sqlite3

            raise sqlite3.OperationalError("database or disk is full")
        return super().add_batch(batch)


def test_a_failed_store_is_not_acknowledged_and_the_message_comes_back(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    store = FlakyStore(tmp_path / "readings.sqlite")

    async def scenario() -> None:
        task = await start_ingest(store, mosquitto)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="gw-1-dev001") as dev:
            await dev.publish(readings_topic("gw-1", "gw-1-dev001"), batch("gw-1-dev001", range(0, 5)), qos=1)
            await _wait(lambda: store.counts()["ingested"] == 5, timeout=20)  # redelivered after the reconnect
        assert store.failures == 0
        task.cancel()

    asyncio.run(scenario())
    assert store.counts() == {"ingested": 5, "devices": 1, "rejected": 0, "duplicates": 0, "device_resets": 0}
