"""Issue 18, ACL denials in the broker's log, end to end on real processes: Debian's Mosquitto with the files `wearfed
provision` writes (password file, ACL, ``use_username_as_clientid``) logging at debug level, a real ``wearfed gateway
run`` subprocess watching that log (`gateway.acl_watch`), the cloud under uvicorn, and devices publishing with their
own logins (paho). A compromised device's publishes under another device's topic are denied by the broker; at the
fifth within the window its login is revoked (password file + SIGHUP: disconnected, reconnects refused), the gateway
refuses its readings, and the cloud holds the alert and an ``intrusion.contained`` entry from the gateway. The honest
device, which made one denied publish of its own, keeps working. On the way the log is rotated (renamed, broker
reopens it) and garbage, over-long and non-UTF-8 lines are appended to it: the watcher goes on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud.audit import verify_ledger
from device.provision import auth_conf, load_credentials, provision
from federation.telemetry import LDPHeader, Reading, ReadingBatch, encode_batch, readings_topic
from sim.broker import free_port, start_mosquitto
from tests.cloud.participants import COMPLIANCE
from tests.conftest import ENROLL_TOKEN, stop_process

T0 = 1_767_225_600
ROGUE, HONEST = "gw-1-dev001", "gw-1-dev002"


def _wait(what: str, check, timeout: float = 90.0):  # noqa: ANN001, ANN202
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _status(state: Path) -> dict:
    try:
        return json.loads((state / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _batch(device: str, seq0: int) -> bytes:
    rows = tuple(Reading(s, T0 + 300 * s, 100.0 + s) for s in range(seq0, seq0 + 4))
    return encode_batch(ReadingBatch(device=device, epoch=1, ldp=LDPHeader("laplace", 8.0, 40.0, 400.0),
                                     readings=rows))


class Device:
    """A device's MQTT client, logged in with its own provisioned credentials."""

    def __init__(self, creds: dict, port: int) -> None:
        self.disconnected = False
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=creds["username"])
        self.c.username_pw_set(creds["username"], creds["password"])
        self.c.on_disconnect = lambda *_a: setattr(self, "disconnected", True)
        self.c.reconnect_delay_set(min_delay=30, max_delay=60)  # no reconnect during the test
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def publish(self, topic: str, data: bytes) -> None:
        self.c.publish(topic, data, qos=1).wait_for_publish(timeout=10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _connack(creds: dict, port: int) -> str:
    """The broker's answer to a fresh login with these credentials."""
    got: list[str] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=creds["username"])
    c.username_pw_set(creds["username"], creds["password"])
    c.on_connect = lambda _c, _u, _f, rc, _p: got.append(str(rc))
    c.connect("127.0.0.1", port)
    c.loop_start()
    _wait("a CONNACK", lambda: got, timeout=10)
    c.disconnect()
    c.loop_stop()
    return got[0]


def test_a_burst_of_acl_denials_revokes_the_device_and_alerts_the_cloud(cloud, tmp_path: Path) -> None:  # noqa: ANN001
    prov, mq, state = tmp_path / "prov", tmp_path / "mq", tmp_path / "gw-1"
    provision(prov, gateways={"gw-1": [ROGUE, HONEST]})
    port = free_port()
    broker = start_mosquitto(port, mq, extra=auth_conf(prov) + f"log_type debug\npid_file {mq / 'mosquitto.pid'}\n")
    log = mq / "mosquitto.log"
    creds = load_credentials(prov / "credentials.json")
    gw_log = open(tmp_path / "gateway.log", "ab")  # noqa: SIM115 - the subprocess writes it
    gw = subprocess.Popen([sys.executable, "-m", "federation.cli", "gateway", "run", "--id", "gw-1",
                           "--state-dir", str(state), "--cloud-url", cloud.url, "--enroll-token", ENROLL_TOKEN,
                           "--broker-port", str(port), "--credentials", str(prov / "credentials.json"),
                           "--broker-log", str(log), "--broker-passwd-file", str(prov / "passwd"),
                           "--broker-pid-file", str(mq / "mosquitto.pid"), "--acl-denials", "5",
                           "--acl-window-s", "60", "--privacy-rng", "simulation", "--seed", "1",
                           "--no-drift-reports", "--log-level", "info"],
                          stdout=subprocess.DEVNULL, stderr=gw_log)
    devices: list[Device] = []
    try:
        _wait("the gateway subscribed and enrolled", lambda: _status(state).get("subscribed")
              and _status(state).get("enrolled") and "acl_watch" in _status(state), timeout=180)
        honest, rogue = Device(creds[HONEST], port), Device(creds[ROGUE], port)
        devices += [honest, rogue]
        honest.publish(readings_topic("gw-1", HONEST), _batch(HONEST, 0))
        rogue.publish(readings_topic("gw-1", ROGUE), _batch(ROGUE, 0))  # before: the compromised device is accepted
        _wait("both batches stored", lambda: _status(state).get("ingested") == 8)
        honest.publish(readings_topic("gw-1", ROGUE), _batch(HONEST, 4))  # one honest mistake: denied, not contained

        os.rename(log, log.with_suffix(".log.1"))  # rotation: the broker reopens its log on SIGHUP
        os.kill(broker._proc.pid, signal.SIGHUP)
        _wait("the broker's new log", log.exists, timeout=10)
        with open(log, "ab") as fh:  # whatever else lands in the log must not stop the watcher
            fh.write(b"x" * 200_000 + b"\n\xff\xfe\x00 not utf-8\n1796398325: Denied PUBLISH from (broken\n")

        first = time.time()
        for k in range(6):  # the compromised device writes readings under its neighbour's topic
            rogue.publish(readings_topic("gw-1", HONEST), _batch(HONEST, 100 + 4 * k))
        _wait("the device contained", lambda: _status(state).get("acl_watch", {}).get("contained") == 1)
        seen = time.time()  # status.json is rewritten every second: this bounds the containment time from above
        assert _wait("the rogue disconnected by the broker", lambda: rogue.disconnected, timeout=10)
        assert _connack(creds[ROGUE], port) == "Not authorized"  # CONNACK 5: its login is gone
        passwd = (prov / "passwd").read_text().splitlines()
        assert [ln.startswith("# revoked by wearfed") for ln in passwd if ROGUE in ln] == [True]
        assert any(ln.startswith(f"{HONEST}:") for ln in passwd)
        revoked = json.loads((state / "revoked-devices.json").read_text())["devices"]
        assert list(revoked) == [ROGUE] and revoked[ROGUE]["count"] == 5

        honest.publish(readings_topic("gw-1", HONEST), _batch(HONEST, 200))  # the honest device keeps working
        _wait("the honest device's next batch stored", lambda: _status(state).get("ingested") == 12)
        assert _connack(creds[HONEST], port) == "Success"
        watch = _status(state)["acl_watch"]
        assert watch["denials"] >= 6 and watch["rotations"] == 1 and watch["long_lines_dropped"] == 1, watch

        with httpx.Client(base_url=cloud.url, timeout=30) as http:
            alert = _wait("the cloud's alert", lambda: [a for a in http.get("/v1/privacy/alerts", headers=COMPLIANCE)
                                                        .json() if a["kind"] == "intrusion.acl_denials"])[0]
            assert (alert["participant"], alert["detail"]["key"], alert["detail"]["count"]) == ("gw-1", ROGUE, 5)
            assert any("revoked in" in a for a in alert["detail"]["actions"])
            assert any("reloaded" in a for a in alert["detail"]["actions"])
            entries = http.get("/v1/audit/entries", headers=COMPLIANCE, params={"limit": 10_000}).json()
            [entry] = [e for e in entries if e["kind"] == "intrusion.contained"]
            assert entry["actor"] == "gw-1" and entry["detail"]["key"] == ROGUE
            assert entry["detail"]["topics"] == [readings_topic("gw-1", HONEST)]
            print(f"ACL denial burst: status.json showed the containment {seen - first:.2f} s after the first denied "
                  f"publish; {entry['detail']['detection_seconds']:.3f} s from the first denial the gateway read to "
                  "the revocation (gateway clock)")
        assert _status(state)["acl_watch"]["reports_pending"] == 0
        assert verify_ledger(cloud.units.store.sessions).entries > 0
        assert gw.poll() is None  # the gateway is still running
    finally:
        for d in devices:
            d.close()
        stop_process(gw)
        gw_log.close()
        broker.stop()


def test_the_cloud_takes_only_signed_well_formed_reports_once(cloud) -> None:  # noqa: ANN001
    from federation.node_signals import INTRUSION_REPORT_DOMAIN, signed
    from tests.cloud.participants import FakeNode, assert_reason

    with httpx.Client(base_url=cloud.url, timeout=30) as http:
        gw, stranger = FakeNode(http, "gw-1"), FakeNode(http, "gw-9")
        assert gw.enroll().status_code == 201
        body = {"participant": "gw-1", "report_id": "ab" * 16, "rule": "acl_denials", "subject": ROGUE,
                "subject_kind": "device", "count": 5, "threshold": 5, "window_s": 60.0, "first_at": 1.8e9,
                "contained_at": 1.8e9 + 0.02, "topics": ["wearfed/v1/gw-1/gw-1-dev002/readings"],
                "actions": ["broker login gw-1-dev001 revoked in /etc/mosquitto/passwd"]}

        def post(doc: dict, key=gw.key) -> httpx.Response:  # noqa: ANN001
            return http.post("/v1/intrusion/reports", json=signed(key, doc, INTRUSION_REPORT_DOMAIN))

        assert post(body, stranger.key).status_code == 401  # gw-1's name, another key
        assert post({**body, "participant": "gw-9"}, stranger.key).status_code == 403  # not enrolled
        forged = signed(gw.key, body, INTRUSION_REPORT_DOMAIN)
        forged["count"] = 1  # changed after signing
        assert http.post("/v1/intrusion/reports", json=forged).status_code == 401
        for bad in ({"rule": "anything"}, {"subject": "a\nb"}, {"count": 0}, {"topics": ["t"] * 6},
                    {"window_s": 10**6}, {"extra": 1}, {"actions": []}):
            assert post({**body, **bad}).status_code == 422, bad
        assert_reason(post({**body, "contained_at": 1.0}), 400, "before first_at")
        assert post(body).json() == {"status": "recorded", "report_id": "ab" * 16}
        assert post(body).json()["status"] == "duplicate"  # the gateway's resend after a lost answer
        assert_reason(post({**body, "count": 50}), 409, "already received with other content")
        alerts = [a for a in http.get("/v1/privacy/alerts", headers=COMPLIANCE).json()
                  if a["kind"] == "intrusion.acl_denials"]
        assert len(alerts) == 1 and alerts[0]["detail"]["reported_by"] == "gw-1"
        kinds = [e["kind"] for e in http.get("/v1/audit/entries", headers=COMPLIANCE).json()]
        assert kinds.count("intrusion.contained") == 1
