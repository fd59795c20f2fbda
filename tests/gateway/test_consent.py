"""Consent withdrawal and retention on real processes: Mosquitto with the files `wearfed provision` writes, a real
`wearfed gateway run` subprocess enrolled with the aggregator under uvicorn, devices publishing with their own logins,
and `wearfed device withdraw` as a subprocess.

A device is withdrawn while it and another device stream; afterwards no byte of its id and none of its reading
values remains in any file under the gateway's state directory (every SQLite table, its WAL, every JSON file), its
later readings are dropped, training windows exclude it, and the cloud's audit ledger holds the withdrawal with the
counts. Forged, tampered, stale and misdirected withdrawals are refused and delete nothing.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from device.provision import load_credentials, provision
from federation.consent import consent_key, new_withdrawal
from federation.telemetry import LDPHeader, Reading, ReadingBatch, consent_topic, encode_batch, readings_topic
from federation.windows import windows_from_series
from gateway.store import ReadingStore
from sim.broker import free_port, start_mosquitto
from tests.conftest import ENROLL_TOKEN, stop_process
from tests.gateway.test_ingest_crash import status, wait

GW, A, B = "gw-1", "gw-1-dev001", "gw-1-dev002"
T0 = 1_767_225_600
VALUE = {A: lambda s: 111.0 + 0.0137 * s + 1e-7, B: lambda s: 222.0 + 0.0211 * s + 1e-7}  # never integral


def provisioned(tmp_path: Path):  # noqa: ANN201
    out = tmp_path / "prov"
    provision(out, gateways={GW: [A, B]})
    broker = start_mosquitto(free_port(), tmp_path / "mq", extra=(out / "mosquitto-auth.conf").read_text())
    return broker, out


def gateway_state(tmp_path: Path, out: Path) -> Path:
    state = tmp_path / GW
    state.mkdir()
    (state / "devices.txt").write_text(f"{A}\n{B}\n")
    shutil.copy(out / f"consent-keys-{GW}.txt", state / "consent-keys.txt")
    return state


def start_gateway(state: Path, port: int, out: Path, cloud_url: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "federation.cli", "gateway", "run", "--id", GW, "--state-dir", str(state),
         "--broker-port", str(port), "--credentials", str(out / "credentials.json"), "--cloud-url", cloud_url,
         "--enroll-token", ENROLL_TOKEN, "--log-level", "warning", *extra],
        stdout=subprocess.DEVNULL, stderr=open(state.parent / "gw.log", "ab"))




def client(out: Path, port: int, device: str) -> mqtt.Client:
    d = load_credentials(out / "credentials.json")[device]
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device, clean_session=False)
    c.username_pw_set(d["username"], d["password"])
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def batch(device: str, lo: int, hi: int) -> bytes:
    rows = tuple(Reading(s, T0 + 300 * s, VALUE[device](s)) for s in range(lo, hi))
    return encode_batch(ReadingBatch(device=device, epoch=7, ldp=LDPHeader("hybrid", 8.0, 40.0, 400.0),
                                     readings=rows))


def publish(c: mqtt.Client, topic: str, payload: bytes) -> None:
    info = c.publish(topic, payload, qos=1)
    info.wait_for_publish(timeout=10)
    assert info.is_published()


def files_under(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def traces_of(root: Path, device: str, seqs: range | list[int], *, id_too: bool = True) -> list[str]:
    """Where under `root` the device's id or any of its reading values (SQLite stores REAL as big-endian IEEE 754;
    JSON as text) still appears."""
    needles = {device.encode(): "device id"} if id_too else {}
    for s in seqs:
        v = VALUE[device](s)
        needles[struct.pack(">d", v)] = f"reading {s} (binary)"
        needles[repr(v).encode()] = f"reading {s} (text)"
    return [f"{path.name}: {what}" for path, data in files_under(root).items()
            for needle, what in needles.items() if needle in data]


def tables(db_path: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        names = [n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {n: db.execute(f"SELECT * FROM {n}").fetchall() for n in names}


def entries(cloud, kind: str) -> list[dict]:  # noqa: ANN001
    return [e for e in cloud.audit_entries() if e["kind"] == kind]


def test_withdrawal_mid_stream_purges_everything_and_is_audited(tmp_path: Path, cloud) -> None:  # noqa: ANN001
    broker, out = provisioned(tmp_path)
    state = gateway_state(tmp_path, out)
    creds = load_credentials(out / "credentials.json")
    gw = start_gateway(state, broker.port, out, cloud.url, "--metrics-port", "0")
    ca, cb = client(out, broker.port, A), client(out, broker.port, B)
    try:
        wait(lambda: status(state).get("subscribed") and status(state).get("enrolled"), "subscription and enrollment",
             timeout=60)
        for k in range(6):  # 60 readings each: 5 h on the 5-min grid, enough for training windows
            publish(ca, readings_topic(GW, A), batch(A, 10 * k, 10 * k + 10))
            publish(cb, readings_topic(GW, B), batch(B, 10 * k, 10 * k + 10))
        publish(ca, readings_topic(GW, A), b"\xa1garbage naming " + A.encode())  # quarantined, names A
        wait(lambda: status(state).get("ingested") == 120 and status(state).get("rejected") == 1, "120 readings")
        assert traces_of(state, A, range(60)), "the scan must see A before the purge (else it proves nothing)"

        # -- forged, tampered, stale and misdirected withdrawals: refused, nothing deleted ---------------------
        key_a = consent_key(creds[A]["consent_key"])
        forged = new_withdrawal(Ed25519PrivateKey.generate(), gateway=GW, device=A)
        good = json.loads(new_withdrawal(key_a, gateway=GW, device=A))
        good["record"]["issued_at"] += 1  # one field changed after signing
        tampered = json.dumps(good).encode()
        stale = new_withdrawal(key_a, gateway=GW, device=A, now=time.time() - 8 * 86400)
        other_gw = new_withdrawal(key_a, gateway="gw-2", device=A)
        for payload in (forged, tampered, stale, other_gw, b"not json", b"{}"):
            publish(ca, consent_topic(GW, A), payload)
        publish(cb, consent_topic(GW, B), new_withdrawal(key_a, gateway=GW, device=A))  # A's record on B's topic
        wait(lambda: status(state).get("consent", {}).get("withdrawals_refused") == 7, "7 refused withdrawals")
        assert status(state)["ingested"] == 120 and status(state)["consent"]["withdrawn_devices"] == 0

        # -- the real withdrawal, while both devices stream -----------------------------------------------------
        streaming = threading.Event()
        sent = {A: 60, B: 60}

        def stream() -> None:
            while not streaming.is_set():
                for dev in (A, B):
                    try:
                        publish(clients[dev], readings_topic(GW, dev), batch(dev, sent[dev], sent[dev] + 2))
                    except RuntimeError:  # A's login is busy with the withdraw command for a moment
                        assert dev == A
                    sent[dev] += 2
                time.sleep(0.05)

        clients = {A: ca, B: cb}

        t = threading.Thread(target=stream)
        t.start()
        time.sleep(0.5)
        ca.loop_stop()
        ca.disconnect()  # the withdraw command logs in as A (use_username_as_clientid: one session per device)
        dev_state = tmp_path / "dev-a"
        res = subprocess.run([sys.executable, "-m", "federation.cli", "device", "withdraw", "--device-id", A,
                              "--gateway", GW, "--state-dir", str(dev_state), "--credentials",
                              str(out / "credentials.json"), "--broker-port", str(broker.port)],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        ca = clients[A] = client(out, broker.port, A)  # a device that ignores the withdrawal keeps publishing: dropped
        wait(lambda: status(state).get("consent", {}).get("withdrawn_devices") == 1, "the withdrawal", timeout=30)
        time.sleep(1.0)
        streaming.set()
        t.join(timeout=30)
        for k in range(3):
            publish(ca, readings_topic(GW, A), batch(A, 10_000 + 10 * k, 10_000 + 10 * k + 10))
        publish(ca, readings_topic(GW, A), b"garbage after withdrawal " + A.encode())
        wait(lambda: status(state)["consent"]["messages_dropped_after_withdrawal"] >= 4, "dropped later messages")
        deleted = status(state)["consent"]["readings_deleted_by_withdrawal"]
        assert deleted >= 60 and status(state)["consent"]["quarantined_deleted_by_withdrawal"] == 1

        # -- the cloud's audit ledger: the withdrawal, counts only, and what cannot be undone ----------------------
        wait(lambda: entries(cloud, "consent.withdrawal"), "the withdrawal in the audit ledger", timeout=30)
        (entry,) = entries(cloud, "consent.withdrawal")
        assert entry["actor"] == GW and entry["detail"]["subject_kind"] == "device"
        assert entry["detail"]["deleted"] == {"readings": deleted, "quarantined_messages": 1}
        assert "cannot be removed" in entry["detail"]["irreversible"]
        assert A not in json.dumps(entry)  # a pseudonym, never the id
        wait(lambda: status(state)["consent"]["reports_pending"] == 0, "the report acknowledged")
        port = json.loads((state / "metrics.json").read_text())["port"]
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert 'wearfed_gateway_withdrawn_devices{gateway="gw-1"} 1.0' in scraped
        assert f'wearfed_gateway_withdrawal_deleted_readings{{gateway="gw-1"}} {float(deleted)}' in scraped
    finally:
        for c in (ca, cb):
            c.loop_stop()
            c.disconnect()
        stop_process(gw)
        broker.stop()  # the provisioned broker is this test's own, not the fixture's
    # -- after the purge: nothing of A in any table or file; B untouched; windows without A ------------------------
    all_seqs = list(range(sent[A] + 2)) + list(range(10_000, 10_030))
    assert traces_of(state, A, all_seqs) == []
    dump = tables(state / "readings.sqlite")
    assert A not in repr(dump) and {r[0] for r in dump["readings"]} == {B}
    assert len(dump["readings"]) == sent[B]
    assert A not in (state / "devices.txt").read_text() and A not in (state / "consent-keys.txt").read_text()
    store = ReadingStore(state / "readings.sqlite")
    try:
        w = windows_from_series(store.series(), cutoff=None)
        assert set(w.patients) == {B} and len(w) > 0
        assert store.is_withdrawn(A) and not store.is_withdrawn(B)
    finally:
        store.close()
    # the device itself: withdrawn on disk, so a restarted device releases nothing
    assert list((dev_state / "consent").glob(f"{A}-*.json"))


def test_retention_deletes_old_rows_and_audits_counts(tmp_path: Path, cloud) -> None:  # noqa: ANN001
    broker, out = provisioned(tmp_path)
    state = gateway_state(tmp_path, out)
    period_days = 4.0 / 86400  # four seconds, so the test sees rows age out
    gw = start_gateway(state, broker.port, out, cloud.url, "--retention-days", repr(period_days),
                       "--retention-interval-s", "0.5")
    cb = client(out, broker.port, B)
    try:
        wait(lambda: status(state).get("subscribed") and status(state).get("enrolled"), "subscription and enrollment",
             timeout=60)
        publish(cb, readings_topic(GW, B), batch(B, 0, 20))
        wait(lambda: status(state).get("ingested") == 20, "20 readings")
        assert status(state)["retention_days"] == period_days
        wait(lambda: status(state).get("ingested") == 0, "retention to delete them", timeout=30)
        assert status(state)["retention"]["readings_deleted"] == 20
        wait(lambda: entries(cloud, "retention.deleted"), "the retention entry in the audit ledger", timeout=30)
        detail = entries(cloud, "retention.deleted")[0]["detail"]
        assert detail["deleted"] == {"readings": 20, "quarantined_messages": 0}
        assert abs(detail["period_days"] - period_days) < 1e-12
    finally:
        cb.loop_stop()
        cb.disconnect()
        stop_process(gw)
        broker.stop()
    assert traces_of(state, B, range(20), id_too=False) == [] and tables(state / "readings.sqlite")["readings"] == []
