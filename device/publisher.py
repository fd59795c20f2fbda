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
sequence numbers and resends every unacknowledged reading; the gateway drops duplicates by (device, epoch, seq).
A device whose state was lost starts a new epoch (`device.spool`): its new readings are never taken for old ones.

A device whose profile runs the forecaster also subscribes to its gateway's retained model topic, verifies
each release (`device.model_client`) and runs the loaded LiteRT model on its raw readings, which never leave
it (`device.inference`); its retained status carries the loaded version and refusals by reason. Its health events
(forecaster alerts and review flags) are computed from raw readings outside the privacy budget, so they stay on
the device: in its local status file (`DeviceStats.alerts`), never on the status topic (issue 13 item 6).

Privacy noise comes from the OS CSPRNG (`PrivacyRNG.secure()`): two runs of one device release different values,
and nobody who knows a seed or the device id can recompute the noise. Only the named simulation mode
(``privacy_rng="simulation"``: replays, studies, tests) seeds it, and says `SIMULATION_LABEL` in its status and logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from device.consent import marker_path
from device.inference import DEFAULT_ALERT_CONFIDENCE, AlertMonitor
from device.ldp import privatize
from device.model_client import ModelClient, max_payload_bytes
from device.mqtt_lite import DEFAULT_MAX_PACKET, LiteClient, MqttError, Will
from device.odometer import PrivacyOdometer, utc_day
from device.profiles import Profile, apply_overrides
from device.release_plan import DeviceTrace, PlanItem, ReleaseMode, StreamRelease
from device.sensor import SENSOR_RANGE, stable_seed, synthetic_trace
from device.spool import DeviceQueue, Spool
from device.traces import load_trace, load_treatments
from federation.clock import SimClock
from federation.errors import ConfigError
from federation.privacy_rng import SECURE, SIMULATION, SIMULATION_LABEL, PrivacyRNG
from federation.runtime import Backoff
from federation.telemetry import (
    GLUCOSE,
    PATIENT_DAY,
    STREAMS,
    LDPHeader,
    Reading,
    ReadingBatch,
    encode_batch,
    model_topic,
    readings_topic,
    status_topic,
)

log = logging.getLogger(__name__)

MQTT_OVERHEAD_BYTES = 4  # fixed header + packet id of a QoS 1 PUBLISH, besides topic and payload
RECONNECT_BACKOFF = Backoff(base_s=0.2, cap_s=30.0)  # full jitter (federation.runtime)


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
    daily_cap: float | None = None  # None: the profile's (event-level option: the cap per day)
    privacy_unit: str | None = None  # None: the profile's ("patient-day"; "reading" is the labelled event-level option)
    daily_budget: float | None = None  # None: the profile's epsilon per patient-day
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
    privacy_rng: str = SECURE  # "simulation": seeded, reproducible noise (replays, studies, tests; labelled)
    mqtt_keepalive_s: int = 60  # PINGREQ every half of it; no PINGRESP within mqtt_timeout_s: reconnect
    mqtt_timeout_s: float = 10.0  # deadline for CONNACK, PUBACK, SUBACK and PINGRESP

    def __post_init__(self) -> None:
        if not 0.0 < self.alert_confidence <= 1.0:
            raise ConfigError(f"--alert-confidence {self.alert_confidence} is impossible: must be in (0, 1]")
        if isinstance(self.odometer_block, bool) or not isinstance(self.odometer_block, int) or self.odometer_block < 1:
            raise ConfigError(f"--odometer-block {self.odometer_block!r} is impossible: must be an integer >= 1")
        if not (isinstance(self.days, (int, float)) and math.isfinite(self.days) and self.days > 0):
            raise ConfigError(f"--days {self.days!r} is impossible: must be a finite number > 0")
        if not (isinstance(self.mqtt_keepalive_s, int) and 0 < self.mqtt_keepalive_s <= 65535):
            raise ConfigError(f"--mqtt-keepalive {self.mqtt_keepalive_s!r} is impossible: must be in [1, 65535] s")
        if not (math.isfinite(self.mqtt_timeout_s) and self.mqtt_timeout_s > 0):
            raise ConfigError(f"--mqtt-timeout {self.mqtt_timeout_s!r} is impossible: must be > 0 s")
        if self.sensor_age_s is not None and not (math.isfinite(self.sensor_age_s) and self.sensor_age_s >= 0):
            raise ConfigError(f"--sensor-age {self.sensor_age_s!r} is impossible: must be >= 0 seconds")
        if self.privacy_rng not in (SECURE, SIMULATION):
            raise ConfigError(f"--privacy-rng {self.privacy_rng!r} is impossible: must be {SECURE} or {SIMULATION}")
        self.effective_profile()  # overrides are validated like the profile's own fields (ProfileError names the flag)

    @property
    def privacy_rng_label(self) -> str:
        """What the status and logs say about the noise: "secure", or SIMULATION_LABEL."""
        return SECURE if self.privacy_rng == SECURE else SIMULATION_LABEL

    def noise_rng(self) -> PrivacyRNG:
        """The OS CSPRNG; seeded from (seed, device id) only in the named simulation mode."""
        if self.privacy_rng == SECURE:
            return PrivacyRNG.secure()
        return PrivacyRNG.simulation(stable_seed(self.seed + 1, self.device_id))

    def effective_profile(self) -> Profile:
        """The firmware profile with this device's command-line overrides applied and validated."""
        return apply_overrides(self.profile, batch_size=self.batch_size, ldp_mechanism=self.ldp_mechanism,
                               epsilon_per_reading=self.ldp_epsilon, daily_cap=self.daily_cap,
                               privacy_unit=self.privacy_unit, epsilon_per_patient_day=self.daily_budget)

    def release_mode(self, *, treatments: bool) -> ReleaseMode:
        """What this device releases and at which epsilon (`device.release_plan`)."""
        p = self.effective_profile()
        budget = p.epsilon_per_patient_day if p.privacy_unit == PATIENT_DAY else p.daily_cap
        return StreamRelease(mechanism=p.ldp_mechanism, unit=p.privacy_unit, budget=budget,
                             epsilon_per_reading=p.epsilon_per_reading, interval_s=p.sample_interval_s,
                             treatments=treatments)

    @property
    def mechanism(self) -> str:
        return self.ldp_mechanism or self.profile.ldp_mechanism


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
    alerts: dict[str, int] = field(default_factory=dict)  # forecasts run, alerts and review flags: local only
    privacy_rng: str = SECURE  # "secure", or SIMULATION_LABEL when the noise is seeded


class _Device:
    """Shared state of one device's sampler and publisher."""

    def __init__(self, cfg: DeviceConfig, clock: SimClock, queue: DeviceQueue, odometer: PrivacyOdometer | None,
                 stats: DeviceStats, models: ModelClient | None = None) -> None:
        self.cfg, self.clock, self.queue, self.odometer, self.stats = cfg, clock, queue, odometer, stats
        self.consent_marker: Path | None = None
        self.models = models
        self.monitor = AlertMonitor(threshold=cfg.alert_confidence) if models is not None else None
        self._sync_model_stats()
        self.p = cfg.profile
        self.origin = cfg.session_origin(clock.sim_start)
        self.wake = asyncio.Event()
        self.status: dict = {"state": "online"}
        self.privacy_status: dict = {"privacy_rng": cfg.privacy_rng_label}
        self.sampling_done = False
        self.stopped = False  # battery flat: nothing more is sampled or sent
        self._reserved_day, self._reserved = "", 0.0
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

    def withdrawn(self) -> bool:
        """The patient withdrew consent (`wearfed device withdraw` wrote the marker): checked before every release."""
        return self.consent_marker is not None and self.consent_marker.exists()

    def set_status(self, state: str, **extra: object) -> None:
        self.status = {"state": state, **extra}
        self.stats.state = state
        self.wake.set()

    def status_doc(self) -> dict:
        """The retained status payload: state and privacy randomness, plus model and refusals on forecaster devices.

        No health events (alert and review counts): they are functions of raw readings outside the budget.
        """
        doc = {**self.status, **self.privacy_status}
        if self.models is None:
            return doc
        return {**doc, **self.models.status(), "alert_confidence": self.monitor.threshold}

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

    def on_oversized_model(self, size: int) -> None:
        """A model-topic message larger than any release this device accepts: refused before it was buffered."""
        limit = max_payload_bytes(self.cfg.profile.max_model_bytes)
        self.models.refuse("oversized", f"message of {size} B exceeds {limit} B; skipped without buffering it")
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

    async def reserve(self, t: int, epsilon: float | None) -> bool:
        """Charge the odometer for one release of `epsilon` (in blocks ahead); False when the day's cap is reached.

        Charging ahead is conservative: a kill forfeits at most a block of unused budget, it never under-counts.
        The durable write (fsync) runs in a worker thread so it never stalls the other devices' event loop.
        """
        if self.odometer is None or epsilon is None:
            return True
        day = utc_day(t)
        if day != self._reserved_day:
            self._reserved_day, self._reserved = day, 0.0
        if self._reserved < epsilon * (1 - 1e-12):
            for n in (self.cfg.odometer_block, 1):
                if self.odometer.can_charge(day, n * epsilon):
                    await asyncio.to_thread(self.odometer.charge, day, epsilon=n * epsilon, releases=n)
                    self._reserved += n * epsilon
                    break
            else:
                return False
        self._reserved = max(0.0, self._reserved - epsilon)
        return True


async def _sample(dev: _Device, plan: list[PlanItem], released: np.ndarray, mode: ReleaseMode) -> None:
    """Walk the release plan on the simulated clock: observe every glucose reading, charge, spool each release."""
    p, q, stats = dev.p, dev.queue, dev.stats
    resume = (q.state.next_t, q.state.next_k)
    start = next((i for i, it in enumerate(plan) if it.key >= resume), len(plan)) if q.state.next_t else 0
    eps = {s: (mode.spec(s).epsilon if mode.spec(s) is not None else None) for s in mode.streams()}
    exhausted_day = ""
    for i in range(start, len(plan)):
        item = plan[i]
        t = item.t
        await dev.clock.sleep_until(t)
        if item.stream == GLUCOSE:
            if (t - dev.origin) % p.session_s < p.warmup_s:
                stats.gaps += 1
                continue
            dev.observe(t, item.raw)  # local forecast on the raw reading, before (and whatever) local DP
        if not item.release:
            continue
        if dev.withdrawn():
            return  # consent withdrawn: nothing more is released (device.consent)
        if not dev.has_energy(t, p.energy_per_reading_uj):
            return
        if not await dev.reserve(t, eps[item.stream]):
            stats.suppressed += 1
            day = utc_day(t)
            if exhausted_day != day:
                exhausted_day = day
                rep = dev.odometer.report() if dev.odometer else {}
                dev.set_status("budget-exhausted", day=day, spent=rep.get("daily", {}).get(day),
                               cap=rep.get("daily_cap"), unit=mode.privacy().unit, delta=0.0)
            continue
        if exhausted_day and dev.status.get("state") == "budget-exhausted":
            dev.set_status("online")
        nxt = plan[i + 1].key if i + 1 < len(plan) else (t + p.sample_interval_s, 0)
        q.append(t, float(released[i]), energy_uj=p.energy_per_reading_uj, next_t=nxt[0], next_k=nxt[1],
                 stream=item.stream)
        stats.sampled += 1
        stats.dropped = q.state.dropped
        stats.buffered = len(q)
        dev.wake.set()
    dev.sampling_done = True
    dev.wake.set()


def _client(cfg: DeviceConfig, broker: Broker, will_topic: str, dev: _Device) -> LiteClient:
    will = Will(will_topic, json.dumps({"state": "offline"}).encode(), qos=1, retain=True)
    on_message = on_oversized = None
    max_packet = DEFAULT_MAX_PACKET  # a sensor receives only acknowledgements
    if dev.models is not None:  # a hub takes releases up to what its model limit allows, and no byte more
        on_message = lambda _topic, payload: dev.on_model(payload)  # noqa: E731
        on_oversized = lambda _topic, size: dev.on_oversized_model(size)  # noqa: E731
        max_packet = max_payload_bytes(cfg.profile.max_model_bytes) + 4 + len(model_topic(cfg.gateway))
    return LiteClient(broker.host, broker.port, client_id=cfg.device_id, username=cfg.username or broker.username,
                      password=cfg.password or broker.password, clean_session=False, will=will,
                      timeout=cfg.mqtt_timeout_s, keepalive=cfg.mqtt_keepalive_s, tls=broker.tls_context(),
                      on_message=on_message, max_packet_bytes=max_packet, on_oversized=on_oversized,
                      on_lost=dev.wake.set)


def _batch(cfg: DeviceConfig, epoch: int, mode: ReleaseMode, rows: list[Reading]) -> ReadingBatch:
    """One batch of spooled releases, with the LDP header of each stream in it and the privacy declaration."""
    headers = {}
    for s in {r.stream for r in rows} | {GLUCOSE}:
        spec = mode.spec(s)
        headers[s] = (LDPHeader(mechanism="none", epsilon=None, lo=SENSOR_RANGE[0], hi=SENSOR_RANGE[1])
                      if spec is None else LDPHeader(spec.mechanism, spec.epsilon, spec.lo, spec.hi))
    glucose = headers.pop(GLUCOSE)
    return ReadingBatch(device=cfg.device_id, epoch=epoch, ldp=glucose, readings=tuple(rows), streams=headers,
                        privacy=mode.privacy())


async def _publish(dev: _Device, broker: Broker, mode: ReleaseMode) -> None:
    cfg, p, q, stats, clock = dev.cfg, dev.p, dev.queue, dev.stats, dev.clock
    topic = readings_topic(cfg.gateway, cfg.device_id)
    status = status_topic(cfg.gateway, cfg.device_id)
    batch_size = cfg.batch_size or p.batch_size
    attempt = 0
    link_free = 0.0  # simulated time at which the uplink is free again (throttle)
    while True:
        sent_status: dict | None = None
        try:
            async with _client(cfg, broker, status, dev) as client:
                attempt = 0
                if dev.models is not None:  # releases (the retained one first) go to dev.on_model
                    await client.subscribe(model_topic(cfg.gateway), qos=1)
                while True:
                    if client.error is not None:  # dropped while idle (keep-alive): reconnect now
                        raise client.error
                    doc = dev.status_doc()
                    if doc != sent_status:  # re-sent on a change of state, model or refusals only
                        sent_status = doc
                        await client.publish(status, json.dumps(doc).encode(), qos=1, retain=True)
                    if dev.stopped:
                        return
                    if dev.withdrawn():  # consent withdrawn: say so, publish nothing more
                        dev.set_status("withdrawn")
                        await client.publish(status, json.dumps(dev.status_doc()).encode(), qos=1, retain=True)
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
                    if dev.withdrawn():
                        continue  # re-checked right before the publish: the top of the loop stops
                    payload = encode_batch(_batch(cfg, q.state.epoch, mode, rows))
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
            delay = RECONNECT_BACKOFF.delay(attempt)
            attempt += 1
            log.warning("%s: broker unreachable (%s); retrying in %.2fs", cfg.device_id, exc, delay)
            await asyncio.sleep(delay)


def device_trace(cfg: DeviceConfig, clock: SimClock) -> DeviceTrace:
    """What this device knows: its glucose readings and, from a trace file that has them, insulin and carbs."""
    start = int(clock.sim_start)
    if cfg.trace_file is None:
        times, _true_bg, cgm = synthetic_trace(seed=cfg.seed, patient=cfg.device_id, start=start, days=cfg.days,
                                               interval_s=cfg.profile.sample_interval_s)
        return DeviceTrace(times, cgm)
    times, cgm = load_trace(cfg.trace_file, cfg.device_id, start=start, days=cfg.days)
    treatments = load_treatments(cfg.trace_file, cfg.device_id, start=start, days=cfg.days)
    if treatments is None:
        return DeviceTrace(times, cgm)
    return DeviceTrace(times, cgm, *treatments)


def _plan(cfg: DeviceConfig, clock: SimClock) -> tuple[list[PlanItem], np.ndarray, ReleaseMode]:
    """(plan, released values after local DP, release mode)."""
    trace = device_trace(cfg, clock)
    mode = cfg.release_mode(treatments=trace.has_treatments)
    plan = mode.plan(trace)
    raw = np.array([it.raw for it in plan], dtype=np.float64)
    released = raw.copy()
    rng = cfg.noise_rng()
    # One noise draw per release, released at most once: a value is privatised before it enters the spool and
    # only the spooled value is ever sent (and re-sent); a restarted device privatises afresh only releases that
    # never left it.
    for s in mode.streams():
        idx = np.array([i for i, it in enumerate(plan) if it.stream == s and it.release], dtype=np.int64)
        spec = mode.spec(s)
        if len(idx) and spec is not None:
            released[idx] = privatize(raw[idx], spec=spec, rng=rng)
    return plan, released, mode


def model_client_for(cfg: DeviceConfig, state_dir: Path) -> ModelClient | None:
    """A model client for a device whose profile runs the forecaster (its loaded release kept on disk), else None."""
    if not cfg.profile.runs_forecaster:
        return None
    safe = f"{cfg.device_id}-{zlib.crc32(cfg.device_id.encode()):08x}"
    return ModelClient(cfg.device_id, public_key=cfg.release_key, max_bytes=cfg.profile.max_model_bytes,
                       state_path=state_dir / "models" / f"{safe}.json")


def odometer_for(cfg: DeviceConfig, state_dir: Path) -> PrivacyOdometer | None:
    """The device's odometer in its privacy unit: the patient-day budget, or the event-level daily cap."""
    if cfg.mechanism == "none":
        return None
    p = cfg.effective_profile()
    unit_day = p.privacy_unit == PATIENT_DAY
    cap = p.epsilon_per_patient_day if unit_day else p.daily_cap
    smallest = min(cfg.release_mode(treatments=True).epsilon(s) for s in STREAMS) if unit_day else p.epsilon_per_reading
    safe = f"{cfg.device_id}-{zlib.crc32(cfg.device_id.encode()):08x}"
    return PrivacyOdometer(state_dir / "odometer" / f"{safe}.json", daily_cap=cap, mechanism=cfg.mechanism,
                           epsilon_per_reading=min(smallest, cap), unit=p.privacy_unit)


async def run_device(cfg: DeviceConfig, clock: SimClock, broker: Broker, stats: DeviceStats, *, spool: Spool,
                     state_dir: Path) -> None:
    """Run one device until its trace ends and every reading is acknowledged, or its battery is flat."""
    stats.privacy_rng = cfg.privacy_rng_label
    if cfg.privacy_rng != SECURE:
        log.warning("%s: %s", cfg.device_id, SIMULATION_LABEL)
    queue = spool.device(cfg.device_id, capacity=cfg.profile.store_capacity_readings)
    dev = _Device(cfg, clock, queue, odometer_for(cfg, state_dir), stats, model_client_for(cfg, state_dir))
    dev.consent_marker = marker_path(state_dir, cfg.device_id)
    if dev.withdrawn():
        log.warning("%s: consent was withdrawn on this device: it releases nothing", cfg.device_id)
        stats.state, stats.done = "withdrawn", True
        return
    queue.on_durable(dev.wake.set)
    stats.state = "online"
    plan, released, mode = _plan(cfg, clock)
    dev.privacy_status["privacy"] = mode.describe()  # the unit and budget, declared on the status topic too
    if dev.odometer is not None and dev.odometer.unit != mode.privacy().unit:
        raise ConfigError(f"{cfg.device_id}: odometer unit {dev.odometer.unit} differs from {mode.privacy().unit}")
    sampler = asyncio.create_task(_sample(dev, plan, released, mode))
    publisher = asyncio.create_task(_publish(dev, broker, mode))
    try:
        await asyncio.wait({sampler, publisher}, return_when=asyncio.FIRST_EXCEPTION)
        if sampler.done() and sampler.exception() is not None:
            raise sampler.exception()  # e.g. a corrupt odometer: stop this device, loudly, not hang
        await publisher
    finally:
        sampler.cancel()
        publisher.cancel()
    stats.done = True
