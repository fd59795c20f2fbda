"""Gateway pools: three real `wearfed gateway ingest` processes share one device population through an MQTT 5 shared
subscription on a real Mosquitto and one real PostgreSQL reading store; one is SIGKILLed mid-stream.

Every reading the broker acknowledged to a device is stored exactly once, every device's readings are complete in
its own sequence order, and the load was really shared (rows stored by more than one member).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import create_engine, text

from federation.consent import new_withdrawal
from federation.telemetry import LDPHeader, Reading, ReadingBatch, consent_topic, encode_batch, readings_topic
from gateway.pg_store import PgReadingStore
from gateway.store import DuplicateConflict
from tests.conftest import _postgres_url, stop_process
from tests.gateway.test_ingest_crash import status, wait

pytestmark = pytest.mark.postgres
HEADER = LDPHeader(mechanism="hybrid", epsilon=4.0, lo=40.0, hi=400.0)
DEVICES = tuple(f"gw-1-dev{i:03d}" for i in range(6))
BATCHES, PER_BATCH = 60, 4  # per device
T0 = 1_767_225_600


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from _postgres_url()


def batch(device: str, b: int, *, bump: float = 0.0) -> ReadingBatch:
    readings = tuple(Reading(seq=s, t=T0 + 300 * s, value=100.0 + (s % 50) + DEVICES.index(device) + bump)
                     for s in range(b * PER_BATCH, (b + 1) * PER_BATCH))
    return ReadingBatch(epoch=1, device=device, ldp=HEADER, readings=readings)


def member(broker, tmp: Path, name: str, pg: str, devices: Path, *extra: str) -> subprocess.Popen:  # noqa: ANN001
    state = tmp / name
    state.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "federation.cli", "gateway", "ingest", "--id", "gw-1",
                             "--state-dir", str(state), "--broker-port", str(broker.port), "--devices-file",
                             str(devices), "--pool-group", "gw-1-pool", "--pool-member", name, "--store-url", pg,
                             "--log-level", "warning", *extra],
                            stdout=subprocess.DEVNULL, stderr=open(tmp / f"{name}.log", "ab"))  # noqa: SIM115


def stored(pg: str, device: str | None = None) -> int:
    """Rows in the pool's reading store (of one device, if given)."""
    engine = create_engine(pg)
    try:
        with engine.connect() as c:
            if device is None:
                return c.execute(text("SELECT COUNT(*) FROM readings")).scalar()
            return c.execute(text("SELECT COUNT(*) FROM readings WHERE device=:d"), {"d": device}).scalar()
    finally:
        engine.dispose()


def test_kill_one_gateway_of_three_loses_and_duplicates_nothing(mosquitto, tmp_path: Path, pg_url: str) -> None:  # noqa: ANN001
    devices = tmp_path / "devices.txt"
    devices.write_text("\n".join(DEVICES) + "\n")
    procs = {m: member(mosquitto, tmp_path, m, pg_url, devices) for m in ("m1", "m2", "m3")}
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-fleet")
    try:
        for m in procs:
            wait(lambda m=m: status(tmp_path / m).get("subscribed"), f"pool member {m} to subscribe", timeout=120)
        pub.connect(mosquitto.host, mosquitto.port)
        pub.loop_start()
        accepted = {d: 0 for d in DEVICES}

        def publish_all() -> None:
            for b in range(BATCHES):
                for d in DEVICES:
                    info = pub.publish(readings_topic("gw-1", d), encode_batch(batch(d, b)), qos=1)
                    info.wait_for_publish(timeout=10)
                    assert info.is_published()
                    accepted[d] += PER_BATCH
                time.sleep(0.005)

        publisher = threading.Thread(target=publish_all)
        publisher.start()
        total = len(DEVICES) * BATCHES * PER_BATCH
        wait(lambda: stored(pg_url) >= total // 4, "a quarter of the readings before the kill", timeout=60)
        os.kill(procs["m2"].pid, signal.SIGKILL)  # one member dies mid-stream; nothing of it runs
        procs["m2"].wait(timeout=10)
        at_kill = stored(pg_url)
        publisher.join(timeout=120)
        assert not publisher.is_alive()
        assert sum(accepted.values()) == total and at_kill < total, (at_kill, total)
        time.sleep(2.0)
        while_down = stored(pg_url)  # what the two survivors stored alone (docs/scale.md reports it)
        procs["m2"] = member(mosquitto, tmp_path, "m2", pg_url, devices)  # back, same member name and session
        wait(lambda: stored(pg_url) == total, f"all {total} readings once m2 is back", timeout=90)
        time.sleep(1.0)  # anything redelivered late must still not add rows
        print(f"gateway pool: {total} readings accepted; {at_kill} stored at the kill; {while_down} with m2 down; "
              f"{stored(pg_url)} after its restart")
        engine = create_engine(pg_url)
        with engine.connect() as c:
            rows = c.execute(text("SELECT device, seq, value FROM readings ORDER BY device, seq")).all()
            by_member = dict(c.execute(text("SELECT stored_by, COUNT(*) FROM readings GROUP BY stored_by")).all())
        engine.dispose()
        assert len(rows) == total  # nothing lost, nothing twice
        for d in DEVICES:
            assert [s for dev, s, _v in rows if dev == d] == list(range(BATCHES * PER_BATCH))
        assert all(v == 100.0 + (s % 50) + DEVICES.index(dev) for dev, s, v in rows)
        assert len([m for m, n in by_member.items() if n > 0]) >= 2, by_member  # the load was shared
    finally:
        pub.loop_stop()
        pub.disconnect()
        for p in procs.values():
            stop_process(p)


def test_concurrent_members_store_each_reading_once(pg_url: str) -> None:
    """Redeliveries racing on two connections (members) for the same device: stored once, counted as duplicates."""
    stores = [PgReadingStore(pg_url, member=f"m{i}") for i in range(4)]
    try:
        work = [(stores[i % 4], batch(DEVICES[0], b)) for b in range(20) for i in range(3)]  # each batch thrice
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda sb: sb[0].add_batch(sb[1]), work))
        assert sum(new for new, _dup in results) == 20 * PER_BATCH
        counts = stores[0].counts()
        assert counts["ingested"] == 20 * PER_BATCH and counts["duplicates"] == 2 * 20 * PER_BATCH
        series = stores[1].series()[DEVICES[0]]
        assert list(series.times) == sorted(series.times) and len(series.times) == 20 * PER_BATCH
    finally:
        for s in stores:
            s.close()


def test_reused_sequence_with_other_data_is_a_conflict_and_stores_nothing(pg_url: str) -> None:
    store = PgReadingStore(pg_url, member="m1")
    try:
        store.add_batch(batch(DEVICES[1], 0))
        with pytest.raises(DuplicateConflict, match="re-use a stored sequence number"):
            store.add_batch(batch(DEVICES[1], 0, bump=1.0))  # tampered or reset without a new epoch
        assert store.counts()["ingested"] == PER_BATCH
    finally:
        store.close()


@pytest.mark.parametrize(("flags", "message"), [
    (["--pool-group", "p"], "needs --pool-group, --pool-member and --store-url together"),
    (["--pool-group", "p/#", "--pool-member", "m", "--store-url", "postgresql://x/y"], "--pool-group 'p/#'"),
    (["--pool-group", "p", "--pool-member", "m", "--store-url", "sqlite:///x.db"], "must be a postgresql:// URL"),
])
def test_pool_flags_are_checked(tmp_path: Path, flags: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "federation.cli", "gateway", "ingest", "--id", "gw-1",
                           "--state-dir", str(tmp_path), *flags], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr


def test_a_withdrawal_reaches_one_pool_member_and_purges_the_shared_store(mosquitto, tmp_path: Path,  # noqa: ANN001
                                                                         pg_url: str) -> None:
    """A signed withdrawal on the device's consent topic (a shared subscription too) is carried out once for the
    pool: the device's rows leave the shared store, its later batches are dropped by every member, the other
    device is untouched, and a forged withdrawal is refused."""
    a, b = DEVICES[0], DEVICES[1]
    devices = tmp_path / "devices.txt"
    devices.write_text(f"{a}\n{b}\n")
    key = Ed25519PrivateKey.generate()
    pub = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    keys = tmp_path / "consent-keys.txt"
    keys.write_text(f"{a} {pub}\n")
    procs = {m: member(mosquitto, tmp_path, m, pg_url, devices, "--consent-keys", str(keys)) for m in ("m1", "m2")}
    fleet = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-fleet")
    try:
        for m in procs:
            wait(lambda m=m: status(tmp_path / m).get("subscribed"), f"pool member {m} to subscribe", timeout=120)
        fleet.connect(mosquitto.host, mosquitto.port)
        fleet.loop_start()

        def send(topic: str, payload: bytes) -> None:
            info = fleet.publish(topic, payload, qos=1)
            info.wait_for_publish(timeout=10)
            assert info.is_published()

        for k in range(5):
            for d in (a, b):
                send(readings_topic("gw-1", d), encode_batch(batch(d, k)))
        wait(lambda: stored(pg_url) == 2 * 5 * PER_BATCH, "both devices' first batches")
        send(consent_topic("gw-1", a), new_withdrawal(Ed25519PrivateKey.generate(), gateway="gw-1", device=a))
        # every member's status shows the pool's shared counters: one refusal, whichever member carried it out
        wait(lambda: {status(tmp_path / m).get("consent", {}).get("withdrawals_refused") for m in procs} == {1},
             "the forged withdrawal to be refused")
        assert stored(pg_url, a) == 5 * PER_BATCH
        send(consent_topic("gw-1", a), new_withdrawal(key, gateway="gw-1", device=a))
        wait(lambda: stored(pg_url, a) == 0, "the withdrawn device's rows to leave the shared store")
        for k in range(5, 10):  # the device keeps publishing (e.g. a hub that missed it): no member stores any
            for d in (a, b):
                send(readings_topic("gw-1", d), encode_batch(batch(d, k)))
        wait(lambda: stored(pg_url, b) == 10 * PER_BATCH, "the other device's batches")
        time.sleep(1.0)
        assert stored(pg_url, a) == 0
        wait(lambda: {status(tmp_path / m)["consent"]["withdrawn_devices"] for m in procs} == {1},
             "every member's status to show the one shared tombstone")
        store = PgReadingStore(pg_url, member="check")
        try:
            consent = store.governance_counts()["consent"]  # the pool's counters, shared by its members
            assert consent["readings_deleted_by_withdrawal"] == 5 * PER_BATCH
            assert consent["messages_dropped_after_withdrawal"] == 5 and consent["withdrawals_refused"] == 1
            reports = store.pending_reports()  # no node in this pool: queued for the member that runs one
            assert [r["kind"] for r in reports] == ["withdrawal"]
            assert reports[0]["deleted"] == {"readings": 5 * PER_BATCH, "quarantined_messages": 0}
            assert a not in json.dumps(reports)  # counts and a pseudonym, never the device id
        finally:
            store.close()
    finally:
        fleet.loop_stop()
        fleet.disconnect()
        for p in procs.values():
            stop_process(p)


def test_pool_store_retention_and_withdrawal_race(pg_url: str) -> None:
    """Retention deletes by receipt time and queues counts; a withdrawal racing members' inserts of the same device
    leaves nothing of it (the tombstone is checked under the device lock the purge took); a replay changes nothing."""
    stores = [PgReadingStore(pg_url, member=f"m{i}") for i in range(3)]
    try:
        for k in range(4):
            stores[k % 3].add_batch(batch(DEVICES[2], k))
        assert stores[0].enforce_retention(3600.0) == {"readings": 0, "quarantined_messages": 0}
        later = time.time() + 7200.0
        assert stores[1].enforce_retention(3600.0, now=later) == {"readings": 4 * PER_BATCH, "quarantined_messages": 0}
        assert stored(pg_url) == 0
        assert [r["kind"] for r in stores[2].pending_reports()] == ["retention"]

        work = [(stores[k % 3], batch(DEVICES[3], k)) for k in range(40)]
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = [pool.submit(st.add_batch, bt) for st, bt in work]
            time.sleep(0.05)
            counts = stores[0].withdraw(DEVICES[3], issued_at=int(time.time()))
            for f in futures:
                f.result()
        assert counts is not None and stored(pg_url, DEVICES[3]) == 0
        assert stores[1].withdraw(DEVICES[3], issued_at=int(time.time())) is None
        assert stores[2].add_batch(batch(DEVICES[3], 99)) == (0, 0) and stored(pg_url, DEVICES[3]) == 0
        assert stores[0].governance_counts()["consent"]["withdrawn_devices"] == 1
        for r in stores[0].pending_reports():
            stores[0].report_sent(r["report_id"])
        assert stores[1].pending_reports() == []
    finally:
        for st in stores:
            st.close()
