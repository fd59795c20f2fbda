"""Issue 14 item 1 against real processes: one poisoned batch must not stop a gateway's ingest, and a store that
cannot write makes the health in status.json fail loudly (then recover).

Real Mosquitto, real `wearfed gateway ingest` subprocesses, real SQLite. Before the fix, a batch with
seq = 2**63 passed validation, `store.add_batch` raised OverflowError outside the quarantine path, the message
was never acknowledged and was redelivered first on every reconnect: 0 of another device's 60 acknowledged
batches were stored, even after a restart, while status.json said "subscribed": true.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import exc as sa_exc

from federation.runtime import Backoff
from federation.telemetry import LDPHeader, Reading, ReadingBatch, encode_batch, readings_topic
from gateway.ingest import POISON_ATTEMPTS, IngestHealth, StoreUnavailable, ingest_forever, store_is_down
from gateway.store import ReadingStore
from tests.gateway.test_ingest_crash import publisher, start_gateway, status, stored, wait

HEADER = LDPHeader(mechanism="hybrid", epsilon=4.0, lo=40.0, hi=400.0)
T0 = 1_767_225_600
GOOD, BAD = "gw-1-dev001", "gw-1-dev002"


def batch(device: str, seqs: range, *, seq_offset: int = 0) -> bytes:
    readings = tuple(Reading(seq=s + seq_offset, t=T0 + 300 * s, value=100.0 + s) for s in seqs)
    return encode_batch(ReadingBatch(epoch=1, device=device, ldp=HEADER, readings=readings))


def publish(pub: mqtt.Client, device: str, payload: bytes) -> None:
    info = pub.publish(readings_topic("gw-1", device), payload, qos=1)
    info.wait_for_publish(timeout=10)
    assert info.is_published()  # the broker acknowledged it: from here on the gateway owes us this batch


def quarantine_reasons(state: Path) -> list[str]:
    with sqlite3.connect(state / "readings.sqlite", timeout=10) as db:
        return [r for (r,) in db.execute("SELECT reason FROM quarantine")]


def test_a_seq_2_63_batch_is_quarantined_and_the_other_devices_batches_are_stored(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    state = tmp_path / "gw-1"
    state.mkdir()
    devices = tmp_path / "devices.txt"
    devices.write_text(f"{GOOD}\n{BAD}\n")
    gw = start_gateway(mosquitto, state, devices)
    pub = publisher(mosquitto)
    try:
        wait(lambda: status(state).get("subscribed"), "the gateway to subscribe")
        publish(pub, BAD, batch(BAD, range(0, 1), seq_offset=2 ** 63))
        for b in range(60):
            publish(pub, GOOD, batch(GOOD, range(4 * b, 4 * b + 4)))
        wait(lambda: status(state).get("ingested") == 240, "all 60 batches of the other device", timeout=30)
        assert status(state)["healthy"] is True and status(state)["rejected"] == 1
        assert any("bad sequence 9223372036854775808" in r for r in quarantine_reasons(state))

        gw.send_signal(signal.SIGTERM)
        assert gw.wait(timeout=15) == 0
        gw = start_gateway(mosquitto, state, devices)  # nothing comes back after a restart, nothing is lost
        wait(lambda: status(state).get("subscribed"), "the restarted gateway to subscribe")
        publish(pub, GOOD, batch(GOOD, range(240, 244)))
        wait(lambda: status(state).get("ingested") == 244, "a batch after the restart")
        assert stored(state) == 244 and status(state)["rejected"] == 1 and status(state)["healthy"] is True
    finally:
        pub.loop_stop()
        pub.disconnect()
        if gw.poll() is None:
            gw.kill()
            gw.wait()


class RefusingStore(ReadingStore):
    """A value that passed validation but that SQLite refuses (what seq = 2**63 did): raised by the real store."""

    def add_batch(self, batch):  # noqa: ANN001, ANN201
        if batch.device == BAD:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return super().add_batch(batch)


def test_a_storage_error_of_one_message_quarantines_it_and_the_ingest_goes_on(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    store = RefusingStore(tmp_path / "readings.sqlite")

    async def scenario() -> None:
        ready = asyncio.Event()
        task = asyncio.create_task(ingest_forever(store, "gw-1", host=mosquitto.host, port=mosquitto.port,
                                                  ready=ready))
        await asyncio.wait_for(ready.wait(), 10)
        pub = publisher(mosquitto)
        publish(pub, BAD, batch(BAD, range(0, 4)))
        for b in range(10):
            publish(pub, GOOD, batch(GOOD, range(4 * b, 4 * b + 4)))
        for _ in range(200):
            if store.counts()["ingested"] == 40:
                break
            await asyncio.sleep(0.05)
        pub.loop_stop()
        pub.disconnect()
        task.cancel()

    asyncio.run(scenario())
    assert store.counts() == {"ingested": 40, "devices": 1, "rejected": 1, "duplicates": 0, "device_resets": 0}
    assert "storage refused the batch: OverflowError" in store.quarantined()[0][1]


def test_a_store_that_cannot_write_makes_health_fail_loudly_then_recovers(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    state = tmp_path / "gw-1"
    state.mkdir()
    devices = tmp_path / "devices.txt"
    devices.write_text(f"{GOOD}\n")
    gw = start_gateway(mosquitto, state, devices, extra=["--stuck-after-s", "3"])
    pub = publisher(mosquitto)
    lock = None
    try:
        wait(lambda: status(state).get("subscribed"), "the gateway to subscribe")
        publish(pub, GOOD, batch(GOOD, range(0, 4)))
        wait(lambda: status(state).get("ingested") == 4, "the first batch")
        lock = sqlite3.connect(state / "readings.sqlite", timeout=10, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # another writer holds the database: every gateway write fails
        for b in range(1, 6):
            publish(pub, GOOD, batch(GOOD, range(4 * b, 4 * b + 4)))
        wait(lambda: status(state).get("healthy") is False, "status.json to say the ingest is unhealthy", timeout=60)
        doc = status(state)
        assert doc["ingest"]["state"] == "stuck" and "locked" in doc["ingest"]["last_error"]
        lock.execute("ROLLBACK")
        lock.close()
        lock = None
        wait(lambda: status(state).get("ingested") == 24, "every acknowledged batch once the store works", 60)
        wait(lambda: status(state).get("healthy") is True, "health back to ok")
        assert status(state)["rejected"] == 0  # a store outage quarantines nothing that could be stored
    finally:
        if lock is not None:
            lock.close()
        pub.loop_stop()
        pub.disconnect()
        if gw.poll() is None:
            gw.kill()
            gw.wait()


def test_an_outage_longer_than_the_poison_limit_quarantines_nothing(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    """A database locked by another writer for more than POISON_ATTEMPTS redeliveries of the same batch: once the
    lock goes, every batch is stored and none is quarantined (before, the third failure quarantined the batch as
    poison if the lock was released between the failed store and the quarantine write; seen in CI)."""
    store = ReadingStore(tmp_path / "readings.sqlite")
    store._db.execute("PRAGMA busy_timeout = 50")  # fail fast on the lock (the daemon waits the default 5 s)
    health = IngestHealth()
    lock = sqlite3.connect(tmp_path / "readings.sqlite", isolation_level=None)

    async def scenario() -> None:
        ready = asyncio.Event()
        task = asyncio.create_task(ingest_forever(store, "gw-1", host=mosquitto.host, port=mosquitto.port,
                                                  ready=ready, health=health, backoff=Backoff(base_s=0.05, cap_s=0.1)))
        await asyncio.wait_for(ready.wait(), 10)
        lock.execute("BEGIN EXCLUSIVE")
        pub = publisher(mosquitto)
        for b in range(3):
            publish(pub, GOOD, batch(GOOD, range(4 * b, 4 * b + 4)))
        for _ in range(400):
            if max(health._attempts.values(), default=0) > POISON_ATTEMPTS:
                break
            await asyncio.sleep(0.05)
        assert max(health._attempts.values()) > POISON_ATTEMPTS
        lock.execute("ROLLBACK")
        for _ in range(400):
            if store.counts()["ingested"] == 12:
                break
            await asyncio.sleep(0.05)
        pub.loop_stop()
        pub.disconnect()
        task.cancel()

    try:
        asyncio.run(scenario())
    finally:
        lock.close()
    assert store.counts()["ingested"] == 12 and store.counts()["rejected"] == 0
    assert health.quarantined_storage == 0


def test_store_is_down_tells_an_outage_from_a_message_the_store_refuses(tmp_path: Path) -> None:
    path = tmp_path / "x.sqlite"
    a = sqlite3.connect(path, isolation_level=None)
    b = sqlite3.connect(path, isolation_level=None, timeout=0.01)
    a.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    a.execute("INSERT INTO t VALUES (1)")
    a.execute("BEGIN EXCLUSIVE")
    with pytest.raises(sqlite3.OperationalError) as locked:
        b.execute("INSERT INTO t VALUES (2)")
    a.execute("ROLLBACK")
    with pytest.raises(sqlite3.IntegrityError) as duplicate:
        b.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.OperationalError) as bad_sql:
        b.execute("INSERT INTO nowhere VALUES (1)")
    a.close()
    b.close()
    wrapped = StoreUnavailable("OperationalError: database is locked")
    wrapped.__cause__ = locked.value
    assert store_is_down(locked.value) and store_is_down(wrapped)
    assert not store_is_down(duplicate.value) and not store_is_down(bad_sql.value)
    assert store_is_down(sa_exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")))
    assert not store_is_down(OverflowError("Python int too large to convert to SQLite INTEGER"))
