"""MQTT ingest: subscribe to the gateway's devices, validate every batch, store it, quarantine the rest.

Durability: a QoS 1 message is acknowledged (PUBACK) only after its batch, or its quarantine record, is
committed to SQLite. paho-mqtt 2 with `manual_ack=True` makes that possible (aiomqtt acknowledges on receipt).
The session is persistent (clean_session=False, fixed client id), so after a crash or `kill -9` the broker
redelivers every unacknowledged message; the (device, seq) primary key drops what was stored but not yet
acknowledged, so nothing acknowledged is lost and nothing is counted twice.

No message can stop the ingest: every value is checked against its wire bounds before storage
(`federation.telemetry.decode_batch`), and a storage error that belongs to the message (a value SQLite
refuses, an integrity error) quarantines that message, which is then acknowledged. Only a failure of the store
itself (locked, disk full, I/O error, a lost PostgreSQL connection: `store_is_down`) leaves the message
unacknowledged; the client reconnects with backoff to have it redelivered, however long the outage lasts (every
message would fail alike, so none is quarantined for it). Any other error of the same message `POISON_ATTEMPTS`
times (a bug it triggers) quarantines it, if the quarantine write works, so one message never holds back the others.
`IngestHealth` says what happened; the daemon's status.json reports it, and an ingest that has not stored
anything for `STUCK_AFTER_S` while failing says ``"state": "stuck"`` and ``"healthy": false``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy import exc as sa_exc

from federation.errors import ConfigError, SchemaError
from federation.runtime import Backoff
from federation.telemetry import CONSENT, READINGS, ReadingBatch, decode_batch, device_subscription, parse_topic
from gateway import metrics
from gateway.registry import DeviceRegistry
from gateway.store import DuplicateConflict, ReadingStore

log = logging.getLogger(__name__)
EARLIEST_TIMESTAMP = 946_684_800  # 2000-01-01T00:00:00Z: no CGM reading is older
DEFAULT_MAX_FUTURE_S = 30 * 86400  # simulated clocks may run ahead of the wall clock; beyond this, garbage
POISON_ATTEMPTS = 3  # the same message failing the store this often is quarantined
STUCK_AFTER_S = 30.0  # failing without storing anything for this long: health says "stuck"
STORE_RETRY_BACKOFF = Backoff(base_s=0.5, cap_s=30.0)
# Errors raised by storing one message that belong to the message, not to the store (quarantined at once).
MESSAGE_STORAGE_ERRORS = (OverflowError, ValueError, TypeError, sqlite3.IntegrityError, sqlite3.InterfaceError,
                          sqlite3.ProgrammingError, sqlite3.DataError, sa_exc.IntegrityError, sa_exc.DataError)
STORE_ERRORS = (sqlite3.Error, sa_exc.OperationalError, sa_exc.InterfaceError)  # the store itself (a pool's PostgreSQL)
# SQLite result codes that say the database cannot be written right now, whatever the message (sqlite.org/rescode.html);
# the extended codes (SQLITE_IOERR_WRITE, SQLITE_BUSY_SNAPSHOT, ...) share these prefixes.
SQLITE_STORE_DOWN = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CANTOPEN",
                     "SQLITE_READONLY", "SQLITE_NOMEM", "SQLITE_PROTOCOL", "SQLITE_NOLFS")
POOL_SESSION_EXPIRY_S = 7 * 86400  # a pool member's session (and what the broker queued for it) outlives a restart


@dataclass(frozen=True)
class PoolMembership:
    """A member of a gateway pool: it joins the MQTT 5 shared subscription ``$share/<group>/<topic>`` under its own
    client id (``gateway-<gw>-<member>``), with a persistent session, and stores into the pool's shared store."""

    group: str
    member: str


@dataclass(frozen=True)
class BrokerAccess:
    """How one of the gateway's MQTT clients reaches the broker: address, its own login, TLS.

    The ingest and the model relay each have one, with different principals (`wearfed provision` writes
    ``gateway-<gw>`` and ``gateway-<gw>-relay``): on a broker with ``use_username_as_clientid`` a relay logged in
    as the ingest would take over, and with its clean session discard, the ingest's persistent session.
    With `ca_file` the connection is TLS, verifying the broker's certificate and host name against that CA;
    `cert_file`/`key_file` add a client certificate (mutual TLS).
    """

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def configure(self, client: mqtt.Client) -> None:
        """Credentials and TLS on a paho client (before connect)."""
        if self.username:
            client.username_pw_set(self.username, self.password)
        if self.ca_file is not None:
            client.tls_set(ca_certs=str(self.ca_file), certfile=str(self.cert_file) if self.cert_file else None,
                           keyfile=str(self.key_file) if self.key_file else None, cert_reqs=ssl.CERT_REQUIRED,
                           tls_version=ssl.PROTOCOL_TLS_CLIENT)
        elif self.cert_file is not None:
            raise ConfigError("a client certificate needs TLS: give --broker-ca-file too")

    @property
    def tls(self) -> bool:
        return self.ca_file is not None


ConsentHandler = Callable[[str, bytes], str]


class StoreUnavailable(Exception):
    """The store itself failed (disk full, I/O); the message stays unacknowledged for redelivery."""


def store_is_down(exc: BaseException) -> bool:
    """True if `exc` says the store itself is unavailable (any message would fail now), not this message."""
    cause = exc.__cause__ if isinstance(exc, StoreUnavailable) and exc.__cause__ is not None else exc
    if isinstance(cause, sqlite3.Error):
        return (getattr(cause, "sqlite_errorname", None) or "").startswith(SQLITE_STORE_DOWN)
    return isinstance(cause, (sa_exc.OperationalError, sa_exc.InterfaceError))


class IngestHealth:
    """Shared between the MQTT thread and the daemon's status writer: connection, last store, failures."""

    def __init__(self, *, stuck_after_s: float = STUCK_AFTER_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.stuck_after_s = stuck_after_s
        self.subscribed = False
        self.stored = 0  # messages stored or quarantined (acknowledged) by this process
        self.quarantined_storage = 0  # of which quarantined because storing them failed
        self.last_error: str | None = None
        self.failing_since: float | None = None  # monotonic time of the first failure since the last success
        self._attempts: dict[str, int] = {}  # message digest -> store failures (bounded)

    def ok(self) -> None:
        with self._lock:
            self.stored += 1
            self.failing_since = None

    def failure(self, digest: str, error: str) -> int:
        """Count a failed store of one message; returns how often this message has failed."""
        with self._lock:
            self.last_error = error
            if self.failing_since is None:
                self.failing_since = self._clock()
            if len(self._attempts) > 10_000:
                self._attempts.clear()
            self._attempts[digest] = self._attempts.get(digest, 0) + 1
            return self._attempts[digest]

    def forget(self, digest: str) -> None:
        with self._lock:
            self._attempts.pop(digest, None)

    @property
    def state(self) -> str:
        with self._lock:
            if self.failing_since is not None:
                stuck = self._clock() - self.failing_since >= self.stuck_after_s
                return "stuck" if stuck else "retrying"
            return "ok" if self.subscribed else "connecting"

    def doc(self) -> dict:
        state = self.state
        return {"subscribed": self.subscribed, "healthy": state != "stuck",
                "ingest": {"state": state, "last_error": self.last_error, "messages": self.stored,
                           "quarantined_storage_errors": self.quarantined_storage}}


def message_digest(topic: str, payload: bytes) -> str:
    return hashlib.sha256(topic.encode() + b"\x00" + payload).hexdigest()


def check_batch(batch: ReadingBatch, *, registry: DeviceRegistry | None, now: float, max_future_s: float) -> None:
    """Gateway-side checks past the schema: known device, plausible and consistent timestamps."""
    if registry is not None and (why := registry.refusal(batch.device)) is not None:
        raise SchemaError(why)
    prev = None
    for r in batch.readings:
        if not EARLIEST_TIMESTAMP <= r.t <= now + max_future_s:
            raise SchemaError(f"timestamp {r.t} of seq {r.seq} outside [{EARLIEST_TIMESTAMP}, now + {max_future_s:g}s]")
        if prev is not None and not (r.seq > prev.seq and r.t >= prev.t):
            raise SchemaError(f"readings not in order: seq {prev.seq}@{prev.t} then {r.seq}@{r.t}")
        prev = r


def handle_message(store: ReadingStore, gateway: str, topic: str, payload: bytes, *,
                   registry: DeviceRegistry | None = None, now: float | None = None,
                   max_future_s: float = DEFAULT_MAX_FUTURE_S) -> str:
    """Validate and store one message; returns "stored", "duplicate" or "rejected: <reason>".

    Never raises on bad input (nor on a value the store refuses: quarantined); raises StoreUnavailable (or the
    sqlite3.Error of a failing quarantine write) only if the store itself fails: then nothing is acknowledged.
    """
    try:
        where = parse_topic(topic)
        if where.device is not None and store.is_withdrawn(where.device):  # nothing of it is stored, not even here
            store.count_dropped_after_withdrawal()
            return "dropped: device withdrew consent"
        if where.gateway != gateway or where.kind != READINGS:
            raise SchemaError(f"unexpected topic {topic!r}: not a readings topic of gateway {gateway!r}")
        batch = decode_batch(payload)
        if batch.device != where.device:
            raise SchemaError(f"payload device {batch.device!r} does not match topic device {where.device!r}")
        check_batch(batch, registry=registry, now=time.time() if now is None else now, max_future_s=max_future_s)
    except SchemaError as exc:
        store.quarantine(topic, payload, str(exc))
        metrics.count_quarantined(gateway, str(exc))
        log.warning("rejected message on %s: %s", topic, exc)
        return f"rejected: {exc}"
    except Exception as exc:  # a validator bug must not kill the daemon; keep the message for a human
        store.quarantine(topic, payload, f"internal error while validating: {exc!r}")
        metrics.count_quarantined(gateway, "internal error")
        log.exception("validator failed on %s", topic)
        return f"rejected: internal error {exc!r}"
    try:
        new, dup = store.add_batch(batch)
    except DuplicateConflict as exc:
        store.quarantine(topic, payload, str(exc))
        metrics.count_quarantined(gateway, str(exc))
        log.warning("quarantined a batch on %s: %s", topic, exc)
        return f"rejected: {exc}"
    except MESSAGE_STORAGE_ERRORS as exc:  # this message cannot be stored: keep it for a human, go on
        store.quarantine(topic, payload, f"storage refused the batch: {exc!r}")
        metrics.count_quarantined(gateway, "storage refused")
        log.warning("quarantined a batch on %s that the store refused: %r", topic, exc)
        return f"rejected: storage refused the batch: {exc!r}"
    except STORE_ERRORS as exc:
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
    metrics.count_stored(gateway, new, dup)
    return "stored" if new else "duplicate"


class MqttIngest:
    """One paho client (its own network thread) that stores, then acknowledges, each QoS 1 message."""

    def __init__(self, store: ReadingStore, gateway: str, *, access: BrokerAccess,
                 registry: DeviceRegistry | None = None, max_future_s: float = DEFAULT_MAX_FUTURE_S,
                 on_ready: Callable[[], None] | None = None, health: IngestHealth | None = None,
                 on_consent: ConsentHandler | None = None, pool: PoolMembership | None = None) -> None:
        self.store, self.gateway, self.registry, self.max_future_s = store, gateway, registry, max_future_s
        self.on_consent = on_consent  # (device, payload) -> outcome; gateway.consent.handle_withdrawal
        self.pool = pool
        self.host, self.port = access.host, access.port
        self.health = health or IngestHealth()
        self.failed = threading.Event()  # the store failed: reconnect to have unacknowledged messages redelivered
        self._on_ready = on_ready
        self._topic = device_subscription(gateway, READINGS)
        if pool is None:
            self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"gateway-{gateway}",
                                       clean_session=False, manual_ack=True)
        else:  # MQTT 5 shared subscription (OASIS MQTT 5.0, section 4.8.2): each message to one member of the group
            self._topic = f"$share/{pool.group}/{self._topic}"
            self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"gateway-{gateway}-{pool.member}",
                                       protocol=mqtt.MQTTv5, manual_ack=True)
        access.configure(self._client)
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_disconnect = self._on_disconnect

    def start(self) -> None:
        if self.pool is None:
            self._client.connect_async(self.host, self.port, keepalive=30)
        else:  # a persistent MQTT 5 session: what the broker queued for this member waits for its restart
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = POOL_SESSION_EXPIRY_S
            self._client.connect_async(self.host, self.port, keepalive=30, clean_start=False, properties=props)
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect cleanly; a message being stored finishes first (loop_stop joins the network thread)."""
        self._client.disconnect()
        self._client.loop_stop()
        self.health.subscribed = False

    def _on_connect(self, client: mqtt.Client, _userdata, _flags, reason_code, _props) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            log.warning("gateway %s: broker refused connection: %s", self.gateway, reason_code)
            return
        topics = [(self._topic, 1)]
        if self.on_consent is not None:  # a pool shares withdrawals too: one member carries each out
            consent = device_subscription(self.gateway, CONSENT)
            topics.append((consent if self.pool is None else f"$share/{self.pool.group}/{consent}", 1))
        client.subscribe(topics)

    def _on_subscribe(self, _client, _userdata, _mid, reason_codes, _props) -> None:  # noqa: ANN001
        if any(rc.is_failure for rc in reason_codes):
            log.error("gateway %s: subscription to %s refused: %s", self.gateway, self._topic, reason_codes)
            return
        log.info("gateway %s: subscribed to %s (QoS 1, persistent session)", self.gateway, self._topic)
        self.health.subscribed = True
        if self._on_ready is not None:
            self._on_ready()

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _props) -> None:  # noqa: ANN001
        self.health.subscribed = False
        if reason_code.is_failure:
            log.warning("gateway %s: broker connection lost (%s); paho reconnects", self.gateway, reason_code)

    def _on_message(self, client: mqtt.Client, _userdata, message: mqtt.MQTTMessage) -> None:  # noqa: ANN001
        if self.failed.is_set():
            return  # not acknowledged: redelivered after the reconnect
        topic, payload = message.topic, bytes(message.payload)
        if self.on_consent is not None and topic.endswith(f"/{CONSENT}"):
            if not self._consent(topic, payload):
                return  # not acknowledged: redelivered after the reconnect
            self.health.ok()
            if message.qos > 0:
                client.ack(message.mid, message.qos)
            return
        try:
            handle_message(self.store, self.gateway, topic, payload, registry=self.registry,
                           max_future_s=self.max_future_s)
        except Exception as exc:  # the store failed (disk full, I/O) or a bug: never kill paho's network thread
            if not self._poisoned(topic, payload, exc):
                metrics.count_store_failure(self.gateway)
                log.exception("gateway %s: store failed; message %s not acknowledged", self.gateway, message.mid)
                self.failed.set()
                return
        self.health.ok()
        if message.qos > 0:
            client.ack(message.mid, message.qos)

    def _consent(self, topic: str, payload: bytes) -> bool:
        """Carry out a withdrawal; False (unacknowledged, redelivered) only if the store failed. A malformed topic or
        record is refused and acknowledged; its payload is never stored."""
        try:
            where = parse_topic(topic)
        except SchemaError as exc:
            log.warning("gateway %s: ignored a message on %r: %s", self.gateway, topic, exc)
            return True
        if where.gateway != self.gateway or where.kind != CONSENT or where.device is None:
            return True
        try:
            outcome = self.on_consent(where.device, payload)  # type: ignore[misc]
        except Exception:
            metrics.count_store_failure(self.gateway)
            log.exception("gateway %s: a withdrawal could not be carried out; not acknowledged", self.gateway)
            self.failed.set()
            return False
        log.info("gateway %s: consent message: %s", self.gateway, outcome.split(":")[0])
        return True

    def _poisoned(self, topic: str, payload: bytes, exc: Exception) -> bool:
        """After POISON_ATTEMPTS failures of this very message, quarantine it; True if that worked. Never while
        the store itself is down: a message that fails only because of an outage is stored when it ends."""
        digest = message_digest(topic, payload)
        if self.health.failure(digest, f"{type(exc).__name__}: {exc}") < POISON_ATTEMPTS or store_is_down(exc):
            return False
        try:
            self.store.quarantine(topic, payload, f"storing failed {POISON_ATTEMPTS} times: {exc!r}")
        except Exception:  # the store is down for everyone: the health check reports it
            log.exception("gateway %s: cannot quarantine a message that keeps failing", self.gateway)
            return False
        self.health.forget(digest)
        self.health.quarantined_storage += 1
        metrics.count_quarantined(self.gateway, "storing failed")
        log.error("gateway %s: quarantined a message on %s after %d failed stores (%r)", self.gateway, topic,
                  POISON_ATTEMPTS, exc)
        return True


async def ingest_forever(store: ReadingStore, gateway: str, *, host: str = "127.0.0.1", port: int = 1883,
                         username: str | None = None, password: str | None = None,
                         access: BrokerAccess | None = None, ready: asyncio.Event | None = None,
                         registry: DeviceRegistry | None = None, max_future_s: float = DEFAULT_MAX_FUTURE_S,
                         health: IngestHealth | None = None, backoff: Backoff = STORE_RETRY_BACKOFF,
                         on_consent: ConsentHandler | None = None,
                         pool: PoolMembership | None = None) -> None:
    """Run the ingest until cancelled; after a store failure, reconnect with backoff for redelivery.

    `access` (address, login, TLS) wins over the plain `host`/`port`/`username`/`password` keywords.
    """
    access = access or BrokerAccess(host=host, port=port, username=username, password=password)
    loop = asyncio.get_running_loop()
    on_ready = (lambda: loop.call_soon_threadsafe(ready.set)) if ready is not None else None
    health = health or IngestHealth()
    attempt = 0
    while True:
        ingest = MqttIngest(store, gateway, access=access, registry=registry, max_future_s=max_future_s,
                            on_ready=on_ready, health=health, on_consent=on_consent, pool=pool)
        ingest.start()
        try:
            while not ingest.failed.is_set():
                await asyncio.sleep(0.2)
                if health.failing_since is None:
                    attempt = 0
        finally:
            await asyncio.to_thread(ingest.stop)
        delay = backoff.delay(attempt)
        attempt += 1
        log.warning("gateway %s: reconnecting in %.1fs after a store failure (ingest %s)", gateway, delay,
                    health.state)
        await asyncio.sleep(delay)
