"""`wearfed device withdraw` then `wearfed device run` on a provisioned Mosquitto: the withdrawn device releases
nothing (the marker survives the restart), while the same run of a device that did not withdraw publishes readings;
the gateway's principal sees the signed withdrawal on the device's consent topic."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from device.provision import load_credentials, provision
from federation.consent import verify_withdrawal
from sim.broker import free_port, start_mosquitto

GW, A, B = "gw-1", "gw-1-dev001", "gw-1-dev002"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "federation.cli", *args], capture_output=True, text=True,
                          timeout=180)


def test_withdrawn_device_releases_nothing_after_restart(tmp_path: Path) -> None:
    out = tmp_path / "prov"
    provision(out, gateways={GW: [A, B]})
    broker = start_mosquitto(free_port(), tmp_path / "mq", extra=(out / "mosquitto-auth.conf").read_text())
    creds = load_credentials(out / "credentials.json")
    seen: list[tuple[str, bytes]] = []
    gw = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gateway-gw-1")
    gw.username_pw_set(creds["gateway-gw-1"]["username"], creds["gateway-gw-1"]["password"])
    gw.on_message = lambda _c, _u, m: seen.append((m.topic, bytes(m.payload)))
    gw.connect("127.0.0.1", broker.port)
    for kind in ("readings", "consent"):
        gw.subscribe(f"wearfed/v1/{GW}/+/{kind}", qos=1)
    gw.loop_start()
    try:
        time.sleep(0.5)
        state = tmp_path / "devices"
        common = ["--credentials", str(out / "credentials.json"), "--broker-port", str(broker.port)]
        res = cli("device", "withdraw", "--device-id", A, "--gateway", GW, "--state-dir", str(state), *common)
        assert res.returncode == 0, res.stderr
        run = ["--gateway", GW, "--state-dir", str(state), "--days", "0.05", "--accel", "20000", *common]
        for dev in (A, B):
            res = cli("device", "run", "--device-id", dev, "--status-file", str(tmp_path / f"{dev}.json"), *run)
            assert res.returncode == 0, res.stderr
        deadline = time.time() + 10
        while time.time() < deadline and not any(t.endswith(f"{B}/readings") for t, _ in seen):
            time.sleep(0.1)
    finally:
        gw.loop_stop()
        gw.disconnect()
        broker.stop()
    stats = {d: json.loads((tmp_path / f"{d}.json").read_text())["per_device"][d] for d in (A, B)}
    assert stats[A]["state"] == "withdrawn" and stats[A]["published"] == 0
    assert stats[B]["published"] > 0  # the same run without a withdrawal does publish: the check above can fail
    assert not [t for t, _ in seen if t.endswith(f"{A}/readings")]
    assert [t for t, _ in seen if t.endswith(f"{B}/readings")]
    (withdrawal,) = [p for t, p in seen if t == f"wearfed/v1/{GW}/{A}/consent"]
    verify_withdrawal(withdrawal, public_key=creds[A]["consent_public_key"], gateway=GW, device=A)
    again = cli("device", "withdraw", "--device-id", A, "--gateway", GW, "--state-dir", str(state),
                "--credentials", str(out / "credentials.json"), "--broker-port", "1")
    assert again.returncode == 0 and "already withdrawn" in again.stdout  # persisted; no broker needed


def test_withdraw_refuses_bad_input(tmp_path: Path) -> None:
    out = tmp_path / "prov"
    provision(out, gateways={GW: [A]})
    base = ["device", "withdraw", "--gateway", GW, "--state-dir", str(tmp_path / "d"), "--credentials",
            str(out / "credentials.json")]
    res = cli(*base, "--device-id", "gw-1-dev999")
    assert res.returncode == 2 and "no consent key for device 'gw-1-dev999'" in res.stderr
    res = cli(*base[:2], "--gateway", "gw-2", *base[4:], "--device-id", A)
    assert res.returncode == 2 and "provisioned to gw-1" in res.stderr
    res = cli(*base, "--device-id", A, "--broker-port", "70000")
    assert res.returncode == 2 and "--broker-port" in res.stderr and "Traceback" not in res.stderr
