"""A small asyncio MQTT 3.1.1 client for devices: what a CGM needs and no more, at a fraction of the CPU.

One `asyncio.Protocol` per connection, no threads, no per-publish tasks: a QoS 1 publish is one write and one
future resolved by its PUBACK. Supported: CONNECT with client id, credentials, clean-session flag, Last Will
(topic, payload, QoS, retain) and keep-alive; PUBLISH at QoS 0/1 with retain; SUBSCRIBE; inbound PUBLISH at
QoS 0/1 (PUBACK sent after the message handler ran); PINGREQ when idle; DISCONNECT; TLS through an
`ssl.SSLContext`. Not supported (devices never need them): QoS 2, MQTT 5 properties, UNSUBSCRIBE.

Packet layouts follow the OASIS MQTT Version 3.1.1 standard (2014), section 2 (fixed header, remaining length)
and section 3 (CONNECT 3.1, CONNACK 3.2, PUBLISH 3.3, PUBACK 3.4, SUBSCRIBE 3.8, SUBACK 3.9, PINGREQ 3.12,
DISCONNECT 3.14).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass

from device.errors import DeviceError

log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 8, 9, 12, 13, 14
CONNACK_REASONS = {1: "unacceptable protocol version", 2: "client identifier rejected", 3: "server unavailable",
                   4: "bad user name or password", 5: "not authorised"}
MAX_REMAINING = 268_435_455  # the largest remaining length four varint bytes can encode (3.1.1 section 2.2.3)


class MqttError(DeviceError):
    """The connection failed, was refused or dropped; pending publishes are not acknowledged."""


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def _str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("!H", len(raw)) + raw


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    n = len(body)
    if n > MAX_REMAINING:
        raise MqttError(f"packet of {n} bytes exceeds MQTT's limit")
    head = bytearray([kind << 4 | flags])
    while True:
        byte, n = n % 128, n // 128
        head.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(head) + body


def connect_packet(client_id: str, *, clean_session: bool, keepalive: int, username: str | None = None,
                   password: str | None = None, will: Will | None = None) -> bytes:
    flags = (0x02 if clean_session else 0) | (0x80 if username else 0) | (0x40 if password else 0)
    payload = _str(client_id)
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += _str(will.topic) + struct.pack("!H", len(will.payload)) + will.payload
    if username:
        payload += _str(username)
    if password:
        payload += _str(password)
    return _packet(CONNECT, 0, _str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload)


class _Protocol(asyncio.Protocol):
    def __init__(self, client: LiteClient) -> None:
        self.client = client
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            parsed = self._next_packet()
            if parsed is None:
                return
            self.client._on_packet(*parsed)

    def _next_packet(self) -> tuple[int, int, bytes] | None:
        buf, mult, length, i = self.buf, 1, 0, 1
        while True:
            if i >= len(buf):
                return None
            byte = buf[i]
            length += (byte & 0x7F) * mult
            mult *= 128
            i += 1
            if not byte & 0x80:
                break
            if i > 4:
                raise MqttError("malformed remaining length from the broker")
        if len(buf) < i + length:
            return None
        kind, flags, body = buf[0] >> 4, buf[0] & 0x0F, bytes(buf[i:i + length])
        del buf[:i + length]
        return kind, flags, body

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._on_lost(exc)


class LiteClient:
    """Use as `async with LiteClient(...) as c: await c.publish(...)`; leaving the block disconnects cleanly."""

    def __init__(self, host: str, port: int, *, client_id: str, username: str | None = None,
                 password: str | None = None, clean_session: bool = False, keepalive: int = 60,
                 will: Will | None = None, tls: ssl.SSLContext | None = None, timeout: float = 10.0,
                 on_message: Callable[[str, bytes], None] | None = None) -> None:
        self.host, self.port, self.tls, self.timeout = host, port, tls, timeout
        self.keepalive, self.on_message = keepalive, on_message
        self._connect = connect_packet(client_id, clean_session=clean_session, keepalive=keepalive,
                                       username=username, password=password, will=will)
        self._transport: asyncio.Transport | None = None
        self._connack: asyncio.Future[int] | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._next_id = 0
        self._error: MqttError | None = None
        self._pinger: asyncio.Task | None = None
        self.session_present = False

    async def __aenter__(self) -> LiteClient:
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        try:
            await asyncio.wait_for(loop.create_connection(
                lambda: _Protocol(self), self.host, self.port, ssl=self.tls,
                server_hostname=self.host if self.tls else None), self.timeout)
            self._transport.write(self._connect)
            code = await asyncio.wait_for(self._connack, self.timeout)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._close()
            raise MqttError(f"cannot connect to {self.host}:{self.port}: {exc or type(exc).__name__}") from exc
        if code:
            self._close()
            raise MqttError(f"broker refused the connection: {CONNACK_REASONS.get(code, f'code {code}')}")
        if self.keepalive:
            self._pinger = asyncio.create_task(self._ping())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(_packet(DISCONNECT, 0, b""))
        self._close()

    def _close(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
        if self._transport is not None:
            self._transport.close()

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive / 2)
            self._write(_packet(PINGREQ, 0, b""))

    def _write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self._transport is None or self._transport.is_closing():
            raise MqttError("not connected")
        self._transport.write(data)

    def _packet_id(self) -> int:
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._pending:
                return self._next_id
        raise MqttError("65,535 messages in flight")

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Send; at QoS 1 return once the broker's PUBACK arrived (raise MqttError if the connection drops)."""
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, got {qos}")
        flags = (qos << 1) | (1 if retain else 0)
        if qos == 0:
            self._write(_packet(PUBLISH, flags, _str(topic) + payload))
            return
        pid = self._packet_id()
        fut = asyncio.get_running_loop().create_future()
        self._pending[pid] = fut
        try:
            self._write(_packet(PUBLISH, flags, _str(topic) + struct.pack("!H", pid) + payload))
            await fut
        finally:
            self._pending.pop(pid, None)

    async def subscribe(self, topic: str, *, qos: int = 1) -> int:
        """Subscribe and return the granted QoS (raise MqttError if the broker refused: 0x80)."""
        pid = self._packet_id()
        fut = asyncio.get_running_loop().create_future()
        self._pending[pid] = fut
        try:
            self._write(_packet(SUBSCRIBE, 0x02, struct.pack("!H", pid) + _str(topic) + bytes([qos])))
            granted = await asyncio.wait_for(fut, self.timeout)
        finally:
            self._pending.pop(pid, None)
        if granted == 0x80:
            raise MqttError(f"broker refused the subscription to {topic}")
        return granted

    # -- from the protocol --------------------------------------------------------------------------
    def _on_packet(self, kind: int, flags: int, body: bytes) -> None:
        if kind == PUBACK:
            fut = self._pending.get(struct.unpack_from("!H", body)[0])
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif kind == PUBLISH:
            self._on_publish(flags, body)
        elif kind == CONNACK and self._connack is not None and not self._connack.done():
            self.session_present = bool(body[0] & 1)
            self._connack.set_result(body[1])
        elif kind == SUBACK:
            fut = self._pending.get(struct.unpack_from("!H", body)[0])
            if fut is not None and not fut.done():
                fut.set_result(body[2])

    def _on_publish(self, flags: int, body: bytes) -> None:
        (n,) = struct.unpack_from("!H", body)
        topic, at = body[2:2 + n].decode("utf-8"), 2 + n
        qos = (flags >> 1) & 3
        pid = None
        if qos:
            (pid,) = struct.unpack_from("!H", body, at)
            at += 2
        if self.on_message is not None:
            try:
                self.on_message(topic, body[at:])
            except Exception:  # a handler bug must not take the connection (and the readings) down with it
                log.exception("message handler failed on %s", topic)
        if pid is not None:  # acknowledged after the handler ran: a crash in between means a redelivery
            with contextlib.suppress(MqttError):
                self._write(_packet(PUBACK, 0, struct.pack("!H", pid)))

    def _on_lost(self, exc: Exception | None) -> None:
        self._error = MqttError(f"connection to {self.host}:{self.port} lost: {exc or 'closed by the broker'}")
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(OSError(str(self._error)))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(self._error)
        if self._pinger is not None:
            self._pinger.cancel()
