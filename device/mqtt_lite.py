"""A small asyncio MQTT 3.1.1 client for devices: what a CGM needs and no more, at a fraction of the CPU.

One `asyncio.Protocol` per connection, no threads, no per-publish tasks: a QoS 1 publish is one write and one
future resolved by its PUBACK. Supported: CONNECT with client id, credentials, clean-session flag, Last Will
(topic, payload, QoS, retain) and keep-alive; PUBLISH at QoS 0/1 with retain; SUBSCRIBE; inbound PUBLISH at
QoS 0/1 (PUBACK sent after the message handler ran); PINGREQ when idle; DISCONNECT; TLS through an
`ssl.SSLContext`. Not supported (devices never need them): QoS 2, MQTT 5 properties, UNSUBSCRIBE.

A broker that stops answering, or sends what a client must never receive, cannot hang or bloat a device:

* CONNACK, PUBACK and SUBACK each have a deadline (`timeout`); a missed one closes the connection.
* Keep-alive is enforced: a PINGREQ every keepalive/2 seconds, and no PINGRESP within `timeout` means the
  connection is dead (section 3.1.2.10: the client "SHOULD close the Network Connection"); it is closed.
* The inbound packet size is checked from the fixed header, before the body is read: a PUBLISH larger than
  `max_packet_bytes` is not buffered; its topic and packet id are read, `on_oversized(topic, size)` is called,
  the rest is discarded as it arrives (memory stays bounded) and the packet is acknowledged, so a retained
  oversized message is not redelivered for ever. Any other packet over the limit closes the connection.
* Packet types a client never receives (CONNECT, SUBSCRIBE, PINGREQ, ..., the reserved 0 and 15), QoS 2
  messages (never subscribed to), wrong fixed-header flags and bodies of the wrong length are protocol
  errors (section 4.8: "close the Network Connection"); the connection is closed.

Each of these fails pending publishes with `MqttError`; the device reconnects with backoff.

Packet layouts follow the OASIS MQTT Version 3.1.1 standard (2014), section 2 (fixed header, remaining length)
and section 3 (CONNECT 3.1, CONNACK 3.2, PUBLISH 3.3, PUBACK 3.4, SUBSCRIBE 3.8, SUBACK 3.9, PINGREQ 3.12,
PINGRESP 3.13, DISCONNECT 3.14).
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
DEFAULT_MAX_PACKET = 64 * 1024  # inbound: acks and small messages; devices that take model releases raise it
# What a client may receive, and the body length each must have (None: variable).
_INBOUND = {CONNACK: 2, PUBLISH: None, PUBACK: 2, SUBACK: 3, PINGRESP: 0}
_NAMES = {0: "reserved (0)", 1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
          7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK", 12: "PINGREQ",
          13: "PINGRESP", 14: "DISCONNECT", 15: "reserved (15)"}


class MqttError(DeviceError):
    """The connection failed, was refused, timed out or broke the protocol; pending publishes are not acknowledged."""


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


class ProtocolViolation(MqttError):
    """The broker sent something a 3.1.1 client must not accept; the connection is closed."""


class _Protocol(asyncio.Protocol):
    """Frames packets; bodies larger than `max_packet` are never buffered (see the module docstring)."""

    def __init__(self, client: LiteClient, *, max_packet: int = DEFAULT_MAX_PACKET) -> None:
        self.client = client
        self.max_packet = max_packet
        self.buf = bytearray()
        self._discard = 0  # bytes of an oversized PUBLISH still to skip
        self._oversized: tuple[int, int, int] | None = None  # (flags, remaining, header bytes) being parsed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._feed(data)
        except ProtocolViolation as exc:
            self.buf.clear()
            self.client._fail(exc)

    def _feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._discard:  # the body of an oversized PUBLISH: counted, not kept
                n = min(self._discard, len(view))
                self._discard -= n
                view = view[n:]
                continue
            if self._oversized is not None:
                view = self._oversized_header(view)
                continue
            self.buf += view
            view = view[len(view):]
            while (parsed := self._next_packet()) is not None:
                self.client._on_packet(*parsed)
            if self._oversized is not None:  # what followed an oversized PUBLISH's fixed header
                view = memoryview(bytes(self.buf))
                self.buf.clear()

    def _head_length(self, flags: int, remaining: int) -> int:
        """Topic length field + topic (+ packet id) of a PUBLISH whose first two body bytes are in `buf`."""
        (n,) = struct.unpack_from("!H", self.buf)
        head = 2 + n + (2 if flags & 0x06 else 0)
        if n == 0 or head > remaining:
            raise ProtocolViolation(f"PUBLISH topic length {n} does not fit its {remaining}-byte body")
        return head

    def _oversized_header(self, view: memoryview) -> memoryview:
        """Collect only the topic and packet id of an oversized PUBLISH, then skip its body."""
        flags, remaining, _ = self._oversized
        need = self._head_length(flags, remaining) if len(self.buf) >= 2 else 2
        take = min(need - len(self.buf), len(view))
        self.buf += view[:take]
        if len(self.buf) >= 2 and len(self.buf) >= self._head_length(flags, remaining):
            self._skip_oversized()
        return view[take:]

    def _skip_oversized(self) -> None:
        flags, remaining, _ = self._oversized
        (n,) = struct.unpack_from("!H", self.buf)
        topic = bytes(self.buf[2:2 + n]).decode("utf-8", "replace")
        pid = struct.unpack_from("!H", self.buf, 2 + n)[0] if flags & 0x06 else None
        self._discard = remaining - len(self.buf)
        self._oversized = None
        self.buf.clear()
        self.client._on_oversized(topic, remaining, pid)

    def _next_packet(self) -> tuple[int, int, bytes] | None:
        buf, mult, length, i = self.buf, 1, 0, 1
        if not buf:
            return None
        kind, flags = buf[0] >> 4, buf[0] & 0x0F
        if kind not in _INBOUND:
            raise ProtocolViolation(f"broker sent a {_NAMES[kind]} packet, which a client never receives")
        if kind != PUBLISH and flags != 0:
            raise ProtocolViolation(f"{_NAMES[kind]} with reserved flags {flags:#x}")
        if kind == PUBLISH and (flags >> 1) & 3 > 1:
            raise ProtocolViolation(f"PUBLISH at QoS {(flags >> 1) & 3}: this client subscribes at QoS <= 1")
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
                raise ProtocolViolation("malformed remaining length from the broker")
        expected = _INBOUND[kind]
        if expected is not None and length != expected:
            raise ProtocolViolation(f"{_NAMES[kind]} with a {length}-byte body (expected {expected})")
        if length > self.max_packet:
            if kind != PUBLISH:
                raise ProtocolViolation(f"{_NAMES[kind]} of {length} bytes exceeds {self.max_packet}")
            if length < 2 + (2 if flags & 0x06 else 0):
                raise ProtocolViolation("PUBLISH shorter than its own header")
            del buf[:i]
            self._oversized = (flags, length, 0)
            return None
        if len(buf) < i + length:
            return None
        body = bytes(buf[i:i + length])
        del buf[:i + length]
        return kind, flags, body

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._on_lost(exc)


class LiteClient:
    """Use as `async with LiteClient(...) as c: await c.publish(...)`; leaving the block disconnects cleanly."""

    def __init__(self, host: str, port: int, *, client_id: str, username: str | None = None,
                 password: str | None = None, clean_session: bool = False, keepalive: int = 60,
                 will: Will | None = None, tls: ssl.SSLContext | None = None, timeout: float = 10.0,
                 on_message: Callable[[str, bytes], None] | None = None,
                 max_packet_bytes: int = DEFAULT_MAX_PACKET,
                 on_oversized: Callable[[str, int], None] | None = None,
                 on_lost: Callable[[], None] | None = None) -> None:
        if timeout <= 0 or keepalive < 0 or max_packet_bytes < 4:
            raise ValueError(f"timeout {timeout} must be > 0, keepalive {keepalive} >= 0, max packet "
                             f"{max_packet_bytes} >= 4")
        self.host, self.port, self.tls, self.timeout = host, port, tls, timeout
        self.keepalive, self.on_message, self.on_oversized = keepalive, on_message, on_oversized
        self.max_packet_bytes = max_packet_bytes
        self.on_lost = on_lost  # called once when the connection is lost or dropped (an idle device learns of it)
        self._connect = connect_packet(client_id, clean_session=clean_session, keepalive=keepalive,
                                       username=username, password=password, will=will)
        self._transport: asyncio.Transport | None = None
        self._connack: asyncio.Future[int] | None = None
        self._pingresp: asyncio.Event | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._next_id = 0
        self._error: MqttError | None = None
        self._pinger: asyncio.Task | None = None
        self.session_present = False

    async def __aenter__(self) -> LiteClient:
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self._pingresp = asyncio.Event()
        try:
            await asyncio.wait_for(loop.create_connection(
                lambda: _Protocol(self, max_packet=self.max_packet_bytes), self.host, self.port, ssl=self.tls,
                server_hostname=self.host if self.tls else None), self.timeout)
            self._transport.write(self._connect)
            code = await asyncio.wait_for(self._connack, self.timeout)
        except (OSError, TimeoutError, ssl.SSLError, MqttError) as exc:
            self._close()
            what = "no CONNACK within the timeout" if isinstance(exc, TimeoutError) else (exc or type(exc).__name__)
            raise MqttError(f"cannot connect to {self.host}:{self.port}: {what}") from exc
        if code:
            self._close()
            raise MqttError(f"broker refused the connection: {CONNACK_REASONS.get(code, f'code {code}')}")
        if self.keepalive:
            self._pinger = asyncio.create_task(self._ping())
        return self

    @property
    def error(self) -> MqttError | None:
        """Why the connection is gone (None while it is up)."""
        return self._error

    def _lost(self) -> None:
        if self.on_lost is not None:
            cb, self.on_lost = self.on_lost, None
            cb()

    async def __aexit__(self, *exc: object) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(_packet(DISCONNECT, 0, b""))
        self._close()

    def _close(self) -> None:
        if self._pinger is not None and self._pinger is not asyncio.current_task():
            self._pinger.cancel()
        if self._transport is not None:
            self._transport.close()

    def _fail(self, error: MqttError) -> None:
        """The connection is unusable (timeout, protocol violation): fail everything pending and drop it."""
        if self._error is None:
            self._error = error
            log.warning("%s:%d: closing the connection: %s", self.host, self.port, error)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(self._error)
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(self._error)
        self._close()
        if self._transport is not None:
            self._transport.abort()
        self._lost()

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive / 2)
            self._pingresp.clear()
            try:
                self._write(_packet(PINGREQ, 0, b""))
            except MqttError:
                return
            try:
                await asyncio.wait_for(self._pingresp.wait(), self.timeout)
            except TimeoutError:
                self._fail(MqttError(f"no PINGRESP within {self.timeout:g}s: the broker stopped answering"))
                return

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

    async def _acked(self, fut: asyncio.Future, what: str) -> object:
        try:
            return await asyncio.wait_for(fut, self.timeout)
        except TimeoutError:
            self._fail(MqttError(f"no {what} within {self.timeout:g}s: the broker stopped answering"))
            raise self._error from None

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Send; at QoS 1 return once the broker's PUBACK arrived (MqttError if it does not within `timeout`)."""
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
            await self._acked(fut, "PUBACK")
        finally:
            self._pending.pop(pid, None)

    async def subscribe(self, topic: str, *, qos: int = 1) -> int:
        """Subscribe and return the granted QoS (raise MqttError if the broker refused: 0x80)."""
        pid = self._packet_id()
        fut = asyncio.get_running_loop().create_future()
        self._pending[pid] = fut
        try:
            self._write(_packet(SUBSCRIBE, 0x02, struct.pack("!H", pid) + _str(topic) + bytes([qos])))
            granted = await self._acked(fut, "SUBACK")
        finally:
            self._pending.pop(pid, None)
        if granted == 0x80:
            raise MqttError(f"broker refused the subscription to {topic}")
        if granted not in (0, 1):
            self._fail(ProtocolViolation(f"SUBACK grants QoS {granted}, asked for {qos}"))
            raise self._error
        return granted

    # -- from the protocol --------------------------------------------------------------------------
    def _on_packet(self, kind: int, flags: int, body: bytes) -> None:
        if kind == PUBACK:
            fut = self._pending.get(struct.unpack_from("!H", body)[0])
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif kind == PUBLISH:
            self._on_publish(flags, body)
        elif kind == CONNACK:
            if self._connack is None or self._connack.done():
                raise ProtocolViolation("a second CONNACK")
            self.session_present = bool(body[0] & 1)
            self._connack.set_result(body[1])
        elif kind == SUBACK:
            fut = self._pending.get(struct.unpack_from("!H", body)[0])
            if fut is not None and not fut.done():
                fut.set_result(body[2])
        elif kind == PINGRESP and self._pingresp is not None:
            self._pingresp.set()

    def _on_publish(self, flags: int, body: bytes) -> None:
        if len(body) < 2:
            raise ProtocolViolation("PUBLISH without a topic")
        (n,) = struct.unpack_from("!H", body)
        qos = (flags >> 1) & 3
        if len(body) < 2 + n + (2 if qos else 0):
            raise ProtocolViolation("PUBLISH shorter than its own header")
        try:
            topic = body[2:2 + n].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolViolation("PUBLISH topic is not UTF-8") from exc
        at = 2 + n
        pid = None
        if qos:
            (pid,) = struct.unpack_from("!H", body, at)
            at += 2
        if self.on_message is not None:
            try:
                self.on_message(topic, body[at:])
            except Exception:  # a handler bug must not take the connection (and the readings) down with it
                log.exception("message handler failed on %s", topic)
        self._puback(pid)

    def _on_oversized(self, topic: str, size: int, pid: int | None) -> None:
        """A PUBLISH over `max_packet_bytes`: reported, never buffered; acknowledged so it is not redelivered."""
        log.warning("%s:%d: skipped a %d-byte message on %s (limit %d)", self.host, self.port, size, topic,
                    self.max_packet_bytes)
        if self.on_oversized is not None:
            try:
                self.on_oversized(topic, size)
            except Exception:
                log.exception("oversized-message handler failed on %s", topic)
        self._puback(pid)

    def _puback(self, pid: int | None) -> None:
        if pid is not None:  # acknowledged after the handler ran: a crash in between means a redelivery
            with contextlib.suppress(MqttError):
                self._write(_packet(PUBACK, 0, struct.pack("!H", pid)))

    def _on_lost(self, exc: Exception | None) -> None:
        if self._error is None:
            self._error = MqttError(f"connection to {self.host}:{self.port} lost: {exc or 'closed by the broker'}")
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(OSError(str(self._error)))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(self._error)
        if self._pinger is not None:
            self._pinger.cancel()
        self._lost()
