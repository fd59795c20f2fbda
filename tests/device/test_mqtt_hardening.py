"""Issue 14 items 3 and 4: the device's MQTT client cannot hang on a broker that stops answering, nor bloat on what
a broker sends. Clients here are the real `device.mqtt_lite.LiteClient` (and real `wearfed device run`
subprocesses) over real TCP; the broker is Mosquitto where it can show the fault (a frozen connection), else the
misbehaving stand-in of tests/device/fake_broker.py (silence, no acks, reserved packet types, a lying header).

Before the fix: no PUBACK or PINGRESP deadline (180 s, 0 reconnects, 58 readings stuck in the issue), reserved
packet types silently ignored, and a PUBLISH header claiming 200 MB grew the device's memory with every byte.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device.mqtt_lite import LiteClient, MqttError, _packet
from federation.clock import DEFAULT_SIM_START
from sim.processes import wait_until
from tests.conftest import stop_process
from tests.device.fake_broker import Behaviour, FakeBroker, packet


@pytest.fixture
def fake():  # noqa: ANN201
    brokers: list[FakeBroker] = []

    def make(**kw: object) -> FakeBroker:
        brokers.append(FakeBroker(Behaviour(**kw)))
        return brokers[-1]

    yield make
    for b in brokers:
        b.close()


def _raised(coro) -> MqttError | None:  # noqa: ANN001
    """The client's own MqttError (its deadline fired), or None; the test's 30 s bound raises TimeoutError instead."""
    async def run() -> MqttError | None:
        try:
            await asyncio.wait_for(coro(), 30)
        except MqttError as exc:
            return exc
        return None

    return asyncio.run(run())


def test_no_connack_is_a_timeout(fake) -> None:  # noqa: ANN001
    b = fake(connack=False)

    async def go() -> None:
        async with LiteClient("127.0.0.1", b.port, client_id="d", timeout=1.0):
            pass

    exc = _raised(go)
    assert isinstance(exc, MqttError) and "no CONNACK" in str(exc)


def test_no_puback_is_a_timeout_and_the_connection_is_dropped(fake) -> None:  # noqa: ANN001
    b = fake(puback=False)

    async def go() -> None:
        async with LiteClient("127.0.0.1", b.port, client_id="d", timeout=1.0, keepalive=0) as c:
            await c.publish("t", b"x", qos=1)

    exc = _raised(go)
    assert isinstance(exc, MqttError) and "no PUBACK" in str(exc)
    wait_until(lambda: b.closed_by_client == 1, timeout=5, what="the client to drop the dead connection")


def test_missing_pingresp_means_a_dead_connection(fake) -> None:  # noqa: ANN001
    b = fake(pingresp=False)

    async def go() -> None:
        lost = asyncio.Event()
        async with LiteClient("127.0.0.1", b.port, client_id="d", timeout=1.0, keepalive=2, on_lost=lost.set) as c:
            await asyncio.wait_for(lost.wait(), 60)  # an idle device: only the keep-alive can notice
            await c.publish("t", b"x", qos=1)

    exc = _raised(go)
    assert isinstance(exc, MqttError) and "PINGRESP" in str(exc)


@pytest.mark.parametrize("raw", [
    packet(15, 0, b""), packet(0, 0, b""),  # reserved packet types
    packet(1, 0, b"\x00\x04MQTT"), packet(8, 2, b"\x00\x01"), packet(12, 0, b""), packet(6, 2, b"\x00\x01"),
    packet(13, 1, b""),  # PINGRESP with reserved flags
    packet(4, 0, b"\x00\x01\x00"),  # PUBACK of the wrong length
    packet(3, 0x04, b"\x00\x01t\x00\x01x"),  # QoS 2, never subscribed to
    packet(2, 0, b"\x00\x00"),  # a second CONNACK
    packet(3, 0, b"\x00\x09t"),  # a topic longer than the packet
])
def test_packets_a_client_never_receives_close_the_connection(fake, raw: bytes) -> None:  # noqa: ANN001
    b = fake(after_connack=raw)

    async def go() -> None:
        async with LiteClient("127.0.0.1", b.port, client_id="d", timeout=2.0, keepalive=0) as c:
            for _ in range(50):
                await c.publish("t", b"x", qos=1)
                await asyncio.sleep(0.02)

    exc = _raised(go)
    assert isinstance(exc, MqttError)
    wait_until(lambda: b.closed_by_client == 1, timeout=5, what="the client to close the connection")


def test_an_oversized_publish_is_skipped_without_buffering_and_acknowledged(fake) -> None:  # noqa: ANN001
    follow = packet(3, 0x02, b"\x00\x01m" + b"\x00\x07" + b"small release")
    b = fake(huge_publish_mb=8, huge_claim=8 * 2 ** 20, then=follow)
    got: list[tuple[str, bytes]] = []
    oversized: list[tuple[str, int]] = []
    peak = [0]

    async def go() -> None:
        c = LiteClient("127.0.0.1", b.port, client_id="d", timeout=5.0, keepalive=0, max_packet_bytes=100_000,
                       on_message=lambda t, p: got.append((t, p)), on_oversized=lambda t, n: oversized.append((t, n)))
        async with c:
            proto = c._transport.get_protocol()
            await c.subscribe("m", qos=1)
            for _ in range(400):
                peak[0] = max(peak[0], len(proto.buf))
                if got:
                    break
                await asyncio.sleep(0.01)

    exc = _raised(go)
    assert exc is None
    assert oversized == [("m", 8 * 2 ** 20)] and got == [("m", b"small release")]
    assert peak[0] <= 200_000  # never more than one read's worth, not the 8 MB body
    wait_until(lambda: b.pubacks_received == [4242, 7], timeout=5, what="both messages to be acknowledged")


def test_an_oversized_ack_closes_the_connection() -> None:
    from device.mqtt_lite import ProtocolViolation, _Protocol

    class Sink:
        def _on_packet(self, *a: object) -> None:
            raise AssertionError("must not be parsed")

        def _fail(self, exc: Exception) -> None:
            self.failed = exc

    sink = Sink()
    proto = _Protocol(sink, max_packet=1024)  # type: ignore[arg-type]
    proto.data_received(_packet(9, 0, b"\x00\x01" + b"\x01" * 5000)[:300])  # a SUBACK claiming 5 KB
    assert isinstance(sink.failed, ProtocolViolation) and len(proto.buf) == 0


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _device(port: int, tmp_path: Path, *extra: str, profile: str = "dexcom-g7", days: float = 0.05,
            accel: float = 600.0) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "federation.cli", "device", "run", "--device-id", "gw-1-dev001", "--gateway",
           "gw-1", "--profile", profile, "--broker-port", str(port), "--days", str(days), "--accel", str(accel),
           "--sim-start", str(DEFAULT_SIM_START), "--wall-start", str(time.time() + 1), "--sensor-age", "86400",
           "--state-dir", str(tmp_path / "dev"), "--status-file", str(tmp_path / "status.json"), *extra]
    return subprocess.Popen(cmd, stdout=open(tmp_path / "dev.log", "ab"), stderr=subprocess.STDOUT)


def test_a_200_mb_publish_header_does_not_grow_a_real_devices_memory(fake, tmp_path: Path) -> None:  # noqa: ANN001
    b = fake(huge_publish_mb=60)
    proc = _device(b.port, tmp_path, "--linger", profile="pi-zero-2w", days=0.01)
    try:
        assert b.subscribed.wait(30), (tmp_path / "dev.log").read_text()[-2000:]
        before = _rss_kb(proc.pid)
        assert b.streamed.wait(60)
        time.sleep(1.0)
        grown_mb = (_rss_kb(proc.pid) - before) / 1024
        assert proc.poll() is None
        assert grown_mb < 20, f"device memory grew {grown_mb:.0f} MB while 60 MB of a 200 MB message arrived"

        def refused() -> bool:
            doc = json.loads((tmp_path / "status.json").read_text()) if (tmp_path / "status.json").exists() else {}
            return doc.get("per_device", {}).get("gw-1-dev001", {}).get("model_refusals") == {"oversized": 1}

        wait_until(refused, timeout=10, what="the oversized release to be counted as a refusal")
    finally:
        stop_process(proc)


class FreezingRelay:
    """TCP relay whose existing connections can be frozen (bytes stop flowing both ways, sockets stay open: a
    half-open link after a NAT or Wi-Fi drop); new connections still pass."""

    def __init__(self, target_port: int) -> None:
        import threading

        from sim.broker import free_port

        self.target, self.port, self.frozen_conns = target_port, free_port(), 0
        self._frozen: set[int] = set()
        self._ids = 0
        self._live: set[int] = set()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(asyncio.start_server(self._accept, "127.0.0.1", self.port),
                                         self._loop).result(timeout=10)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._ids += 1
        cid = self._ids
        self._live.add(cid)
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                while cid in self._frozen:
                    await asyncio.sleep(3600)
                dst.write(data)
                await dst.drain()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer), return_exceptions=True)

    def freeze(self) -> None:
        def f() -> None:
            self._frozen |= self._live
            self.frozen_conns = len(self._live)

        self._loop.call_soon_threadsafe(f)


def test_a_device_reconnects_when_its_connection_goes_silent(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    from gateway.ingest import ingest_forever
    from gateway.store import ReadingStore

    store = ReadingStore(tmp_path / "gw" / "readings.sqlite")
    relay = FreezingRelay(mosquitto.port)

    async def scenario() -> None:
        ready = asyncio.Event()
        ingest = asyncio.create_task(ingest_forever(store, "gw-1", host=mosquitto.host, port=mosquitto.port,
                                                    ready=ready))
        await asyncio.wait_for(ready.wait(), 10)
        proc = _device(relay.port, tmp_path, "--mqtt-keepalive", "4", "--mqtt-timeout", "2", days=0.1, accel=600.0)
        try:
            while store.counts()["ingested"] < 5:
                assert proc.poll() is None
                await asyncio.sleep(0.1)
            relay.freeze()  # the link goes silent mid-stream; nothing tells the device
            deadline = time.time() + 90
            while proc.poll() is None and time.time() < deadline:
                await asyncio.sleep(0.2)
            assert proc.returncode == 0, (tmp_path / "dev.log").read_text()[-3000:]
            while store.counts()["ingested"] < 29 and time.time() < deadline:
                await asyncio.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            ingest.cancel()
            await asyncio.gather(ingest, return_exceptions=True)

    asyncio.run(scenario())
    status = json.loads((tmp_path / "status.json").read_text())
    assert relay.frozen_conns == 1
    assert status["reconnects"] >= 1 and status["published"] == status["sampled"] == 29
    assert store.counts()["ingested"] == 29  # every reading, none stuck behind the dead connection
