"""A misbehaving MQTT 3.1.1 "broker" on a real loopback TCP port, for what Mosquitto cannot be made to do: stay
silent after CONNECT, never acknowledge, ignore PINGREQ, send reserved packet types, or announce a 200 MB PUBLISH.

This is a stand-in used only where the real broker cannot misbehave on request (tests/device/test_mqtt_hardening.py);
everything else runs against Mosquitto. It runs its own asyncio loop in a thread so that it can serve real device
subprocesses as well as clients in the test's own loop.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from dataclasses import dataclass, field

from sim.broker import free_port


def packet(kind: int, flags: int, body: bytes, *, claim: int | None = None) -> bytes:
    """A packet; `claim` overrides the remaining length written in the fixed header (a lying header)."""
    n = len(body) if claim is None else claim
    head = bytearray([kind << 4 | flags])
    while True:
        byte, n = n % 128, n // 128
        head.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(head) + body


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    first = (await reader.readexactly(1))[0]
    mult, length = 1, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length += (byte & 0x7F) * mult
        mult *= 128
        if not byte & 0x80:
            break
    return first >> 4, first & 0x0F, await reader.readexactly(length)


@dataclass
class Behaviour:
    connack: bool = True  # answer CONNECT
    puback: bool = True  # acknowledge QoS 1 publishes
    pingresp: bool = True
    after_connack: bytes = b""  # raw bytes sent right after the CONNACK (e.g. a reserved packet type)
    huge_publish_mb: float = 0.0  # on SUBSCRIBE: a PUBLISH claiming `huge_claim` bytes, this much streamed
    huge_claim: int = 200_000_000
    then: bytes = b""  # raw bytes sent after the huge publish's streamed part


@dataclass
class FakeBroker:
    behaviour: Behaviour = field(default_factory=Behaviour)
    port: int = field(default_factory=free_port)
    connections: int = 0
    closed_by_client: int = 0
    publishes: list[tuple[str, bytes]] = field(default_factory=list)
    pubacks_received: list[int] = field(default_factory=list)
    subscribed: threading.Event = field(default_factory=threading.Event)
    streamed: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name=f"fake-broker-{self.port}")
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", self.port), self._loop).result(timeout=10)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        b = self.behaviour
        try:
            kind, _flags, _body = await read_packet(reader)
            assert kind == 1, f"expected CONNECT, got type {kind}"
            if not b.connack:
                await reader.read()  # silent until the client gives up
                self.closed_by_client += 1
                return
            writer.write(packet(2, 0, b"\x00\x00") + b.after_connack)
            while True:
                kind, flags, body = await read_packet(reader)
                if kind == 3:  # PUBLISH
                    (n,) = struct.unpack_from("!H", body)
                    qos = (flags >> 1) & 3
                    self.publishes.append((body[2:2 + n].decode(), body[2 + n + (2 if qos else 0):]))
                    if qos and b.puback:
                        writer.write(packet(4, 0, body[2 + n:4 + n]))
                elif kind == 4:  # PUBACK from the client
                    self.pubacks_received.append(struct.unpack("!H", body)[0])
                elif kind == 8:  # SUBSCRIBE: grant QoS 1
                    writer.write(packet(9, 0, body[:2] + b"\x01"))
                    self.subscribed.set()
                    if b.huge_publish_mb:
                        await self._huge(writer, body)
                elif kind == 12 and b.pingresp:
                    writer.write(packet(13, 0, b""))
                elif kind == 14:
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client += 1
        finally:
            writer.close()

    async def _huge(self, writer: asyncio.StreamWriter, subscribe_body: bytes) -> None:
        (n,) = struct.unpack_from("!H", subscribe_body, 2)
        topic = subscribe_body[4:4 + n]
        head = struct.pack("!H", len(topic)) + topic + struct.pack("!H", 4242)
        writer.write(packet(3, 0x02 | 0x01, head, claim=self.behaviour.huge_claim))
        left = int(self.behaviour.huge_publish_mb * 2 ** 20) - len(head)
        while left > 0:
            writer.write(b"\xee" * min(65536, left))
            left -= 65536
            await writer.drain()
        writer.write(self.behaviour.then)
        await writer.drain()
        self.streamed.set()
