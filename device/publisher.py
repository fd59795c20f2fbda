"""One simulated CGM device: a sampler and an MQTT publisher (two asyncio tasks) around an on-disk queue.

The sampler walks the device's trace on the simulated clock and enforces the firmware profile: no readings
during a sensor's warm-up (a gap at start-up and at each sensor change), energy per reading and idle power
against the battery (a flat battery stops the device with a "battery-depleted" status, not a crash), the
privacy odometer's daily cap (no reading is released past it; a retained "budget-exhausted" status says
so), and the bounded store-and-forward buffer (full: the oldest reading is dropped and counted). Each
reading is durable in the spool with its sequence number before it can be sent.

The publisher never loses what the spool holds: one client id and credentials per device, QoS 1 with a
persistent session, a batch of up to the profile's batch size per publish, a reading leaves the spool only
after its PUBACK, uplink throttled to the profile's bytes per simulated second, Last Will plus a retained
status topic, and exponential backoff with full jitter between reconnects. A restarted device resumes its
sequence numbers and resends every unacknowledged reading; the gateway drops duplicates by (device, seq).

A device whose profile runs the forecaster also subscribes to its gateway's retained model topic, verifies
each release (`device.model_client`) and runs the loaded LiteRT model on its raw readings, which never leave
it (`device.inference`); its status carries the loaded version, refusals by reason and alert counts only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from device.inference import DEFAULT_ALERT_CONFIDENCE, AlertMonitor
from device.ldp import LDPSpec, privatize
from device.model_client import ModelClient, model_topic
from device.mqtt_lite import LiteClient, MqttError, Will
from device.odometer import PrivacyOdometer, utc_day
from device.profiles import Profile
from device.sensor import SENSOR_RANGE, stable_seed, synthetic_trace
from device.spool import DeviceQueue, Spool
from device.traces import load_trace
from federation.clock import SimClock
from federation.errors import ConfigError
from federation.telemetry import LDPHeader, ReadingBatch, encode_batch, readings_topic, status_topic

log = logging.getLogger(__name__)

MQTT_OVERHEAD_BYTES = 4  # fixed header + packet id of a QoS 1 PUBLISH, besides topic and payload
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.2, 30.0


@dataclass(frozen=True)
class Broker:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None  # TLS when set: verify the broker against this CA
    cert_file: Path | None = None  # optional client certificate (mutual TLS)
    key_file: Path | None = None

    def tls_context(self) -> ssl.SSLContext | None:
        """TLS verifying the broker against `ca_file` (and presenting a client certificate if given), else None."""
        if self.ca_file is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))
        if self.cert_file is not None:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
        return ctx


@dataclass(frozen=True)
class DeviceConfig:
    device_id: str
    gateway: str
    seed: int
    days: float
    profile: Profile
    ldp_mechanism: str | None = None  # None: the profile's; "none" switches local DP off (studies only)
    ldp_epsilon: float | None = None  # None: the profile's epsilon per reading
    daily_cap: float | None = None  # None: the profile's
    batch_size: int | None = None  # None: the profile's
    sensor_age_s: float | None = None  # age of the sensor at sim start; None: just warmed up (no gap at start)
    random_sensor_age: bool = False  # draw the age from the seed instead (staggered sensor changes in a fleet)
    odometer_block: int = 12  # readings charged to the odometer at once, ahead (a kill wastes budget, never leaks)
    username: str | None = None  # per-device broker credentials (override the fleet's)
    password: str | None = None
    trace_file: Path | None = None  # replay this device's trace from a file instead of the synthetic generator
    release_key: str | None = None  # the cloud's release public key (base64 Ed25519), pinned for model releases
    alert_confidence: float = DEFAULT_ALERT_CONFIDENCE  # below it a forecast alert is flagged for review instead
    linger: bool = False  # a forecaster device stays connected after its trace (releases, status) until stopped

    def __post_init__(self) -> None:
        if not 0.0 < self.alert_confidence <= 1.0:
            raise ConfigError(f"alert confidence threshold must be in (0, 1], got {self.alert_confidence}")

    @property
    def mechanism(self) -> str:
        return self.ldp_mechanism or self.profile.ldp_mechanism

    @property
    def epsilon(self) -> float | None:
        if self.mechanism == "none":
            return None
        return float(self.ldp_epsilon if self.ldp_epsilon is not None else self.profile.epsilon_per_reading)

    def ldp_spec(self) -> LDPSpec | None:
        if self.mechanism == "none":
            return None
        return LDPSpec(mechanism=self.mechanism, epsilon=self.epsilon, lo=SENSOR_RANGE[0], hi=SENSOR_RANGE[1])

    def session_origin(self, sim_start: float) -> float:
        """Simulated time at which the sensor worn at sim start was inserted."""
        age = self.profile.warmup_s if self.sensor_age_s is None else self.sensor_age_s
        if self.random_sensor_age:
            rng = np.random.default_rng(stable_seed(self.seed + 2, self.device_id))
            age = float(rng.uniform(0, self.profile.session_s))
        return sim_start - age


@dataclass
class DeviceStats:
    sampled: int = 0  # readings stored in the spool (each with its sequence number)
    published: int = 0  # readings acknowledged by the broker (PUBACK)
    reconnects: int = 0
    done: bool = False
    dropped: int = 0  # readings dropped because the store-and-forward buffer was full
    gaps: int = 0  # sample times skipped during sensor warm-up
    suppressed: int = 0  # readings not released because the daily privacy cap was reached
    buffered: int = 0  # readings in the spool, not yet acknowledged
    battery: float | None = None  # fraction of the battery left (None: mains)
    state: str = "starting"
    errors: list[str] = field(default_factory=list)
    model_version: int | None = None  # loaded on-device model (forecaster profiles only)
    model_serial: int | None = None
    model_refusals: dict[str, int] = field(default_factory=dict)  # refused releases by reason
    alerts: dict[str, int] = field(default_factory=dict)  # forecasts run, alerts and review flags (counts only)


class _Device:
    """Shared state of one device's sampler and publisher."""

    def __init__(self, cfg: DeviceConfig, clock: SimClock, queue: DeviceQueue, odometer: PrivacyOdometer | None,
                 stats: DeviceStats, models: ModelClient | None = None) -> None:
        self.cfg, self.clock, self.queue, self.odometer, self.stats = cfg, clock, queue, odometer, stats
        self.models = models
        self.monitor = AlertMonitor(threshold=cfg.alert_confidence) if models is not None else None
        self._sync_model_stats()
        self.p = cfg.profile
        self.origin = cfg.session_origin(clock.sim_start)
        self.wake = asyncio.Event()
        self.status: dict = {"state": "online"}
        self.sampling_done = False
        self.stopped = False  # battery flat: nothing more is sampled or sent
        self._reserved_day, self._reserved = "", 0
        self._session, self._session_base = None, 0.0  # battery replaced with each sensor: energy at insertion
        stats.dropped = queue.state.dropped
        stats.buffered = len(queue)

    # -- energy ----------------------------------------------------------------------------------------

    def energy_left(self, t: float) -> float | None:
        """Microjoules left at simulated time t (None for mains power).

        Idle power is a function of time since the battery was fitted (the sensor's insertion when the
        battery comes with each sensor, else the first reading); readings and bytes are counted in the spool.
        """
        if self.p.mains_powered:
            return None
        spent = self.queue.state.energy_uj
        if self.p.battery_replaced_each_session:
            k = int((t - self.origin) // self.p.session_s)
            if k != self._session:
                self._session, self._session_base = k, spent
            start = self.origin + k * self.p.session_s
            spent -= self._session_base
        else:
            start = self.queue.state.born_t or t
        return self.p.battery_uj - spent - self.p.idle_power_uw * max(0.0, t - start)

    def has_energy(self, t: float, need_uj: float) -> bool:
        """Refresh the gauge; False (and the device stops, with a status event) when `need_uj` is not there."""
        left = self.energy_left(t)
        if left is None:
            return True
        self.stats.battery = round(max(0.0, left / self.p.battery_uj), 6)
        if left < need_uj:
            self.stats.battery = 0.0
            self.set_status("battery-depleted", t=int(t))
            self.stopped = True
            log.warning("%s: battery depleted at simulated t=%d; device stops", self.cfg.device_id, t)
            return False
        return True

    # -- status ----------------------------------------------------------------------------------------

    def set_status(self, state: str, **extra: object) -> None:
        self.status = {"state": state, **extra}
        self.stats.state = state
        self.wake.set()

    def status_doc(self) -> dict:
        """The retained status payload: state, plus model, refusals and alert counts on forecaster devices."""
        if self.models is None:
            return dict(self.status)
        return {**self.status, **self.models.status(), **self.monitor.status()}

    # -- on-device model ---------------------------------------------------------------------------------

    def _sync_model_stats(self) -> None:
        if self.models is None:
            return
        loaded = self.models.loaded
        self.stats.model_version = loaded.version if loaded else None
        self.stats.model_serial = loaded.serial if loaded else None
        self.stats.model_refusals = dict(self.models.refusals)
        self.stats.alerts = self.monitor.status()["alerts"]

    def on_model(self, payload: bytes) -> None:
        """A message on the model topic: verify and load it, or count the refusal; status follows."""
        self.models.receive(payload)
        self._sync_model_stats()
        self.wake.set()

    def observe(self, t: int, raw_mgdl: float) -> None:
        """A raw reading (pre-LDP, stays on the device): forecast when the window is complete and a model is loaded."""
        if self.monitor is None or not self.monitor.add_reading(t, raw_mgdl) or self.models.loaded is None:
            return
        loaded = self.models.loaded
        events = self.monitor.decide(loaded.forecaster.predict_one(self.monitor.window()), loaded.calibration)
        for e in events:
            log.info("%s: %s %s (confidence %.2f, +%d min)", self.cfg.device_id, e.kind, e.action, e.confidence,
                     e.horizon_min)
        self.stats.alerts = self.monitor.status()["alerts"]
        if events:
            self.wake.set()

    # -- privacy budget --------------------------------------------------------------------------------

    async def reserve(self, t: int) -> bool:
        """Charge the odometer for one reading (in blocks ahead); False when the day's cap is reached.

        The durable write (fsync) runs in a worker thread so it never stalls the other devices' event loop.
        """
        if self.odometer is None:
            return True
        day = utc_day(t)
        if day != self._reserved_day:
            self._reserved_day, self._reserved = day, 0
        if self._reserved == 0:
            for n in (self.cfg.odometer_block, 1):
                if self.odometer.can_spend(day, n):
                    await asyncio.to_thread(self.odometer.spend, day, n)
                    self._reserved = n
                    break
            else:
                return False
        self._reserved -= 1
        return True


async def _sample(dev: _Device, times: np.ndarray, raw: np.ndarray, released: np.ndarray) -> None:
    p, q, stats = dev.p, dev.queue, dev.stats
    start = int(np.searchsorted(times, q.state.next_t)) if q.state.next_t else 0
    exhausted_day = ""
    for i in range(start, len(times)):
        t = int(times[i])
        await dev.clock.sleep_until(t)
        if (t - dev.origin) % p.session_s < p.warmup_s:
            stats.gaps += 1
            continue
        if not dev.has_energy(t, p.energy_per_reading_uj):
            return
        dev.observe(t, float(raw[i]))  # local forecast on the raw reading, before (and whatever) local DP
        if not await dev.reserve(t):
            stats.suppressed += 1
            day = utc_day(t)
            if exhausted_day != day:
                exhausted_day = day
                rep = dev.odometer.report() if dev.odometer else {}
                dev.set_status("budget-exhausted", day=day, spent=rep.get("daily", {}).get(day),
                               cap=rep.get("daily_cap"), unit="reading", delta=0.0)
            continue
        if exhausted_day and dev.status.get("state") == "budget-exhausted":
            dev.set_status("online")
        nxt = int(times[i + 1]) if i + 1 < len(times) else t + p.sample_interval_s
        q.append(t, float(released[i]), energy_uj=p.energy_per_reading_uj, next_t=nxt)
        stats.sampled += 1
        stats.dropped = q.state.dropped
        stats.buffered = len(q)
        dev.wake.set()
    dev.sampling_done = True
    dev.wake.set()


def _client(cfg: DeviceConfig, broker: Broker, will_topic: str, dev: _Device) -> LiteClient:
    will = Will(will_topic, json.dumps({"state": "offline"}).encode(), qos=1, retain=True)
    on_message = (lambda _topic, payload: dev.on_model(payload)) if dev.models is not None else None
    return LiteClient(broker.host, broker.port, client_id=cfg.device_id, username=cfg.username or broker.username,
                      password=cfg.password or broker.password, clean_session=False, will=will, timeout=10,
                      keepalive=60, tls=broker.tls_context(), on_message=on_message)


def _status_key(doc: dict) -> dict:
    """What decides a status re-publish: everything but the count of forecasts run (it changes every reading)."""
    alerts = doc.get("alerts")
    if not isinstance(alerts, dict):
        return doc
    return {**doc, "alerts": {k: v for k, v in alerts.items() if k != "forecasts"}}


async def _publish(dev: _Device, broker: Broker, header: LDPHeader) -> None:
    cfg, p, q, stats, clock = dev.cfg, dev.p, dev.queue, dev.stats, dev.clock
    topic = readings_topic(cfg.gateway, cfg.device_id)
    status = status_topic(cfg.gateway, cfg.device_id)
    batch_size = cfg.batch_size or p.batch_size
    backoff = BACKOFF_MIN_S
    link_free = 0.0  # simulated time at which the uplink is free again (throttle)
    while True:
        sent_status: dict | None = None
        try:
            async with _client(cfg, broker, status, dev) as client:
                backoff = BACKOFF_MIN_S
                if dev.models is not None:  # releases (the retained one first) go to dev.on_model
                    await client.subscribe(model_topic(cfg.gateway), qos=1)
                while True:
                    doc = dev.status_doc()
                    if _status_key(doc) != sent_status:  # not re-sent for the forecast counter alone
                        sent_status = _status_key(doc)
                        await client.publish(status, json.dumps(doc).encode(), qos=1, retain=True)
                    if dev.stopped:
                        return
                    rows = q.peek(batch_size)
                    if not rows:
                        if dev.sampling_done and len(q) == 0:
                            if cfg.linger and dev.models is not None:  # a hub: keep taking releases until stopped
                                if dev.status.get("state") != "done":
                                    dev.set_status("done")
                                    continue  # the status goes out at the top of the loop
                            else:
                                dev.set_status("done")
                                await client.publish(status, json.dumps(dev.status_doc()).encode(), qos=1,
                                                     retain=True)
                                return
                        dev.wake.clear()
                        await dev.wake.wait()
                        continue
                    payload = encode_batch(ReadingBatch(device=cfg.device_id, ldp=header, readings=tuple(rows)))
                    nbytes = len(payload) + len(topic) + MQTT_OVERHEAD_BYTES
                    now = clock.now()
                    if link_free > now:
                        await clock.sleep_until(link_free)
                        now = clock.now()
                    link_free = now + nbytes / p.uplink_bytes_per_s
                    energy = nbytes * p.energy_per_byte_uj
                    if not dev.has_energy(now, energy):
                        continue  # publishes the battery-depleted status, then stops
                    await client.publish(topic, payload, qos=1)
                    q.ack([r.seq for r in rows], energy_uj=energy)
                    stats.published += len(rows)
                    stats.buffered = len(q)
        except MqttError as exc:
            if dev.stopped:
                return  # flat battery: no radio left to retry with
            stats.reconnects += 1
            delay = random.uniform(0, backoff)  # full jitter (AWS architecture blog, "Exponential Backoff And Jitter")
            log.warning("%s: broker unreachable (%s); retrying in %.2fs", cfg.device_id, exc, delay)
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, BACKOFF_MAX_S)


def _trace(cfg: DeviceConfig, clock: SimClock) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times, raw CGM readings, released readings after local DP)."""
    if cfg.trace_file is not None:
        times, cgm = load_trace(cfg.trace_file, cfg.device_id, start=int(clock.sim_start), days=cfg.days)
    else:
        times, _true_bg, cgm = synthetic_trace(seed=cfg.seed, patient=cfg.device_id, start=int(clock.sim_start),
                                               days=cfg.days, interval_s=cfg.profile.sample_interval_s)
    spec = cfg.ldp_spec()
    # One deterministic noise draw per reading: a restarted device re-sends the same privatised value, so a
    # resend never spends (or leaks) more budget.
    noise_rng = np.random.default_rng(stable_seed(cfg.seed + 1, cfg.device_id))
    released = cgm if spec is None else privatize(cgm, spec=spec, rng=noise_rng)
    return times, cgm, released


def model_client_for(cfg: DeviceConfig, state_dir: Path) -> ModelClient | None:
    """A model client for a device whose profile runs the forecaster (its loaded release kept on disk), else None."""
    if not cfg.profile.runs_forecaster:
        return None
    safe = f"{cfg.device_id}-{zlib.crc32(cfg.device_id.encode()):08x}"
    return ModelClient(cfg.device_id, public_key=cfg.release_key, max_bytes=cfg.profile.max_model_bytes,
                       state_path=state_dir / "models" / f"{safe}.json")


def odometer_for(cfg: DeviceConfig, state_dir: Path) -> PrivacyOdometer | None:
    if cfg.mechanism == "none":
        return None
    cap = cfg.daily_cap if cfg.daily_cap is not None else cfg.profile.daily_cap
    safe = f"{cfg.device_id}-{zlib.crc32(cfg.device_id.encode()):08x}"
    return PrivacyOdometer(state_dir / "odometer" / f"{safe}.json", daily_cap=cap, mechanism=cfg.mechanism,
                           epsilon_per_reading=cfg.epsilon)


async def run_device(cfg: DeviceConfig, clock: SimClock, broker: Broker, stats: DeviceStats, *, spool: Spool,
                     state_dir: Path) -> None:
    """Run one device until its trace ends and every reading is acknowledged, or its battery is flat."""
    queue = spool.device(cfg.device_id, capacity=cfg.profile.store_capacity_readings)
    dev = _Device(cfg, clock, queue, odometer_for(cfg, state_dir), stats, model_client_for(cfg, state_dir))
    queue.on_durable(dev.wake.set)
    stats.state = "online"
    header = LDPHeader(mechanism=cfg.mechanism, epsilon=cfg.epsilon, lo=SENSOR_RANGE[0], hi=SENSOR_RANGE[1])
    times, raw, released = _trace(cfg, clock)
    sampler = asyncio.create_task(_sample(dev, times, raw, released))
    publisher = asyncio.create_task(_publish(dev, broker, header))
    try:
        await asyncio.wait({sampler, publisher}, return_when=asyncio.FIRST_EXCEPTION)
        if sampler.done() and sampler.exception() is not None:
            raise sampler.exception()  # e.g. a corrupt odometer: stop this device, loudly, not hang
        await publisher
    finally:
        sampler.cancel()
        publisher.cancel()
    stats.done = True
