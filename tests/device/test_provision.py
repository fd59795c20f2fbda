"""`wearfed provision` against a real Mosquitto: per-device logins, ACL confinement, TLS listener."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path

import aiomqtt
import pytest

from device.provision import (
    device_ids,
    gateway_username,
    load_credentials,
    mosquitto_hash,
    provision,
    relay_username,
    verify_mosquitto_hash,
)
from federation.cli import main
from federation.telemetry import readings_topic
from sim.broker import find_mosquitto, free_port, start_mosquitto, wait_for_port


def test_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    encoded = mosquitto_hash("s3cret", salt=bytes(range(12)))
    assert encoded.startswith("$7$101$") and verify_mosquitto_hash("s3cret", encoded)
    assert not verify_mosquitto_hash("S3cret", encoded)
    assert not verify_mosquitto_hash("s3cret", encoded.replace("$7$", "$6$"))
    assert not verify_mosquitto_hash("s3cret", "garbage")
    tool = Path("/usr/bin/mosquitto_passwd")
    if tool.exists():  # the reference implementation's output verifies with ours
        subprocess.run([str(tool), "-c", "-b", str(tmp_path / "pw"), "alice", "s3cret"], check=True)
        line = (tmp_path / "pw").read_text().strip()
        assert verify_mosquitto_hash("s3cret", line.split(":", 1)[1])


@pytest.fixture
def secured(tmp_path: Path):  # noqa: ANN201
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed")
    tls_port = free_port()
    out = tmp_path / "prov"
    assert main(["provision", "--out", str(out), "--gateways", "gw-1,gw-2", "--devices-per-gateway", "2",
                 "--tls-port", str(tls_port), "--client-certs"]) == 0
    # Started as root, Mosquitto drops to the "mosquitto" user and could not read the 0600 files: keep root.
    broker = start_mosquitto(free_port(), tmp_path / "mq", extra=(out / "mosquitto-auth.conf").read_text())
    wait_for_port("127.0.0.1", tls_port)
    yield broker, out, tls_port
    broker.stop()


def _creds(out: Path) -> dict:
    from device.provision import load_credentials

    return load_credentials(out / "credentials.json")


async def _publish_and_watch(broker, out: Path, publisher: str, topic: str) -> list[str]:  # noqa: ANN001
    creds = _creds(out)
    gw = creds[publisher]["gateway"]
    g = creds[gateway_username(gw)]
    seen: list[str] = []
    async with aiomqtt.Client(broker.host, broker.port, identifier=g["username"], username=g["username"],
                              password=g["password"]) as sub:
        await sub.subscribe(f"wearfed/v1/{gw}/+/readings", qos=1)
        d = creds[publisher]
        async with aiomqtt.Client(broker.host, broker.port, identifier=d["username"], username=d["username"],
                                  password=d["password"]) as dev:
            await dev.publish(topic, b"x", qos=1)  # Mosquitto acks a denied QoS 1 publish and drops it
            await dev.publish(readings_topic(gw, publisher), b"own", qos=1)

        async def drain() -> None:
            async for m in sub.messages:
                seen.append(str(m.topic))
                if str(m.topic) == readings_topic(gw, publisher):
                    return

        await asyncio.wait_for(drain(), 10)
    return seen


def test_files_written_with_private_modes(secured) -> None:  # noqa: ANN001
    _, out, _ = secured
    assert (out / "credentials.json").stat().st_mode & 0o077 == 0
    assert (out / "ca.key").stat().st_mode & 0o077 == 0
    acl = (out / "acl").read_text()
    assert "user gw-1-dev001\ntopic write wearfed/v1/gw-1/gw-1-dev001/#\ntopic read wearfed/v1/gw-1/model" in acl
    passwd = (out / "passwd").read_text().splitlines()
    assert len(passwd) == 8 and all(":$7$101$" in line for line in passwd)  # 2 gateways x (2 devices, ingest, relay)
    assert ("user gateway-gw-1\ntopic read wearfed/v1/gw-1/+/readings\ntopic read wearfed/v1/gw-1/+/status\n"
            "topic read wearfed/v1/gw-1/+/consent\n\nuser gateway-gw-1-relay\n"
            "topic readwrite wearfed/v1/gw-1/model\n") in acl
    assert (out / "clients" / "gw-1-dev001.crt").exists()
    creds = load_credentials(out / "credentials.json")  # consent keys: private half to the device, public to its gw
    keys = (out / "consent-keys-gw-1.txt").read_text()
    assert f"gw-1-dev001 {creds['gw-1-dev001']['consent_public_key']}\n" in keys and "gw-2" not in keys
    assert creds["gw-1-dev001"]["consent_key"] not in keys


def test_device_publishes_only_under_its_own_topic(secured) -> None:  # noqa: ANN001
    broker, out, _ = secured
    other = readings_topic("gw-1", "gw-1-dev002")
    seen = asyncio.run(_publish_and_watch(broker, out, "gw-1-dev001", other))
    assert seen == [readings_topic("gw-1", "gw-1-dev001")]  # the spoofed publish never reached the gateway
    cross = readings_topic("gw-1", "gw-1-dev001").replace("gw-1/", "gw-2/", 1)  # its own id, another gateway
    seen = asyncio.run(_publish_and_watch(broker, out, "gw-1-dev001", cross))
    assert seen == [readings_topic("gw-1", "gw-1-dev001")]


def test_device_cannot_read_other_devices(secured) -> None:  # noqa: ANN001
    broker, out, _ = secured
    creds = _creds(out)

    async def scenario() -> list[str]:
        a, b = creds["gw-1-dev001"], creds["gw-1-dev002"]
        got: list[str] = []
        async with aiomqtt.Client(broker.host, broker.port, identifier=a["username"], username=a["username"],
                                  password=a["password"]) as snoop:
            await snoop.subscribe("wearfed/v1/#", qos=1)
            async with aiomqtt.Client(broker.host, broker.port, identifier=b["username"], username=b["username"],
                                      password=b["password"]) as dev:
                await dev.publish(readings_topic("gw-1", "gw-1-dev002"), b"private", qos=1)
            g = creds[relay_username("gw-1")]
            async with aiomqtt.Client(broker.host, broker.port, identifier=g["username"], username=g["username"],
                                      password=g["password"]) as gwc:
                await gwc.publish("wearfed/v1/gw-1/model", b"model", qos=1)

            async def drain() -> None:
                async for m in snoop.messages:
                    got.append(str(m.topic))
                    if str(m.topic).endswith("/model"):
                        return

            await asyncio.wait_for(drain(), 10)
        return got

    assert asyncio.run(scenario()) == ["wearfed/v1/gw-1/model"]


def test_wrong_password_and_anonymous_are_refused(secured) -> None:  # noqa: ANN001
    broker, out, _ = secured
    d = _creds(out)["gw-1-dev001"]

    async def attempt(username: str | None, password: str | None) -> None:
        async with aiomqtt.Client(broker.host, broker.port, identifier="x", username=username, password=password,
                                  timeout=5):
            pass

    with pytest.raises(aiomqtt.MqttError):
        asyncio.run(attempt(d["username"], d["password"] + "x"))
    with pytest.raises(aiomqtt.MqttError):
        asyncio.run(attempt(None, None))
    with pytest.raises(aiomqtt.MqttError):
        asyncio.run(attempt("gw-1-dev002", d["password"]))  # one device's password opens no other account
    asyncio.run(attempt(d["username"], d["password"]))


def test_tls_listener(secured) -> None:  # noqa: ANN001
    broker, out, tls_port = secured
    d = _creds(out)["gw-1-dev001"]

    async def connect(ca: Path) -> None:
        tls = aiomqtt.TLSParameters(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        async with aiomqtt.Client("127.0.0.1", tls_port, identifier=d["username"], username=d["username"],
                                  password=d["password"], tls_params=tls, timeout=5) as c:
            await c.publish(readings_topic("gw-1", "gw-1-dev001"), b"over tls", qos=1)

    asyncio.run(connect(out / "ca.crt"))
    other = out.parent / "other"
    provision(other, gateways={"gw-9": device_ids("gw-9", 1)})  # a different CA: the server is not trusted
    with pytest.raises(aiomqtt.MqttError):
        asyncio.run(connect(other / "ca.crt"))


def test_fleet_runs_with_provisioned_credentials_over_tls(secured, tmp_path: Path) -> None:  # noqa: ANN001
    import time

    from device.fleet import fleet_configs, run_fleet
    from device.profiles import load_profile
    from device.publisher import Broker
    from federation.clock import DEFAULT_SIM_START, SimClock

    _, out, tls_port = secured
    configs = fleet_configs(gateways=["gw-1"], devices_per_gateway=2, seed=1, days=0.02,
                            profile=load_profile("dexcom-g7"), credentials=_creds(out))
    clock = SimClock(sim_start=DEFAULT_SIM_START, wall_start=time.time(), accel=86_400.0)
    stats = asyncio.run(run_fleet(configs, clock, Broker("127.0.0.1", tls_port, ca_file=out / "ca.crt"),
                                  state_dir=tmp_path / "fleet"))
    assert all(s.done and s.published == s.sampled > 0 and not s.errors for s in stats.values())
