"""The devices' small MQTT client against a real Mosquitto: acks, retained messages, Last Will, refusals, drops."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest

from device.mqtt_lite import LiteClient, MqttError, Will, _packet, _Protocol
from device.provision import load_credentials
from federation.cli import main
from sim.broker import free_port, start_mosquitto, wait_for_port


async def _collect(broker, topic: str, n: int, action) -> list[tuple[str, bytes, bool]]:  # noqa: ANN001
    """Subscribe with an independent client (aiomqtt), run `action`, return the first n messages."""
    got: list[tuple[str, bytes, bool]] = []
    async with aiomqtt.Client(broker.host, broker.port, identifier="watcher") as sub:
        await sub.subscribe(topic, qos=1)
        await action()

        async def drain() -> None:
            async for m in sub.messages:
                got.append((str(m.topic), bytes(m.payload), bool(m.retain)))
                if len(got) == n:
                    return

        await asyncio.wait_for(drain(), 10)
    return got


def test_qos1_publish_is_acknowledged_and_delivered_in_order(mosquitto) -> None:  # noqa: ANN001
    async def send() -> None:
        async with LiteClient(mosquitto.host, mosquitto.port, client_id="dev-1") as c:
            for k in range(300):  # more than one TCP segment's worth, and ids past a few hundred
                await c.publish("t/dev-1", k.to_bytes(2, "big") + b"x" * 200, qos=1)

    got = asyncio.run(_collect(mosquitto, "t/#", 300, send))
    assert [int.from_bytes(p[:2], "big") for _t, p, _r in got] == list(range(300))


def test_retained_message_reaches_a_later_subscriber_and_is_acked(mosquitto) -> None:  # noqa: ANN001
    async def scenario() -> list[tuple[str, bytes]]:
        async with LiteClient(mosquitto.host, mosquitto.port, client_id="gw") as pub:
            await pub.publish("m/gw-1/model", b"release-7", qos=1, retain=True)
        got: list[tuple[str, bytes]] = []
        arrived = asyncio.Event()

        def on_message(topic: str, payload: bytes) -> None:
            got.append((topic, payload))
            arrived.set()

        async with LiteClient(mosquitto.host, mosquitto.port, client_id="dev-2", on_message=on_message) as c:
            assert await c.subscribe("m/gw-1/model", qos=1) == 1
            await asyncio.wait_for(arrived.wait(), 10)
        return got

    assert asyncio.run(scenario()) == [("m/gw-1/model", b"release-7")]


def test_last_will_is_published_when_the_device_vanishes(mosquitto) -> None:  # noqa: ANN001
    async def vanish() -> None:
        c = LiteClient(mosquitto.host, mosquitto.port, client_id="dev-3", will=Will("s/dev-3", b'{"state":"offline"}'))
        await c.__aenter__()
        c._transport.abort()  # no DISCONNECT: the broker must publish the will
        await asyncio.sleep(0.1)

    got = asyncio.run(_collect(mosquitto, "s/#", 1, vanish))
    assert got == [("s/dev-3", b'{"state":"offline"}', False)]


def test_clean_disconnect_sends_no_will(mosquitto) -> None:  # noqa: ANN001
    async def polite() -> None:
        async with LiteClient(mosquitto.host, mosquitto.port, client_id="dev-4", will=Will("s/dev-4", b"off")) as c:
            await c.publish("s/marker", b"done", qos=1)

    got = asyncio.run(_collect(mosquitto, "s/#", 1, polite))
    assert got == [("s/marker", b"done", False)]


def test_broker_gone_fails_pending_and_later_publishes(tmp_path: Path) -> None:
    broker = start_mosquitto(free_port(), tmp_path / "mq")

    async def scenario() -> None:
        async with LiteClient(broker.host, broker.port, client_id="dev-5") as c:
            await c.publish("t/x", b"1", qos=1)
            broker.stop()
            with pytest.raises(MqttError, match="lost"):
                for _ in range(100):
                    await asyncio.wait_for(c.publish("t/x", b"2", qos=1), 5)
                    await asyncio.sleep(0.05)

    asyncio.run(scenario())


def test_nothing_listening_is_a_clear_error() -> None:
    async def scenario() -> None:
        async with LiteClient("127.0.0.1", free_port(), client_id="dev-6", timeout=2):
            pass

    with pytest.raises(MqttError, match="cannot connect"):
        asyncio.run(scenario())


def test_bad_credentials_and_forbidden_subscription_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "prov"
    assert main(["provision", "--out", str(out), "--gateways", "gw-1", "--devices-per-gateway", "1",
                 "--tls-port", str(free_port())]) == 0
    broker = start_mosquitto(free_port(), tmp_path / "mq", extra=(out / "mosquitto-auth.conf").read_text())
    wait_for_port(broker.host, broker.port)
    d = load_credentials(out / "credentials.json")["gw-1-dev001"]

    async def attempt(password: str) -> None:
        async with LiteClient(broker.host, broker.port, client_id=d["username"], username=d["username"],
                              password=password, timeout=5) as c:
            await c.publish(f"wearfed/v1/gw-1/{d['username']}/readings", b"ok", qos=1)

    try:
        with pytest.raises(MqttError, match="refused the connection"):
            asyncio.run(attempt(d["password"] + "x"))
        asyncio.run(attempt(d["password"]))
    finally:
        broker.stop()


@pytest.mark.parametrize("size", [0, 127, 128, 16_383, 16_384, 2_097_152])
def test_remaining_length_round_trips_at_varint_boundaries(size: int) -> None:
    class Sink:
        def __init__(self) -> None:
            self.packets: list[tuple[int, int, bytes]] = []

        def _on_packet(self, kind: int, flags: int, body: bytes) -> None:
            self.packets.append((kind, flags, body))

    sink = Sink()
    proto = _Protocol(sink, max_packet=4_000_000)  # type: ignore[arg-type]
    raw = _packet(3, 2, b"\xab" * size) + _packet(13, 0, b"")
    for k in range(0, len(raw), 4096):  # arrives in pieces, as over TCP
        proto.data_received(raw[k:k + 4096])
    assert [(k, f, len(b)) for k, f, b in sink.packets] == [(3, 2, size), (13, 0, 0)]
