"""One simulated CGM device as an asyncio task: sample on the simulated clock, privatise, publish with QoS 1.

The sampler never waits for the network: readings queue in memory while the broker is unreachable, and the
publisher drains them in batches after reconnecting with exponential backoff and jitter.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import dataclass, field

import aiomqtt
import numpy as np

from device.ldp import LDPSpec, privatize
from device.sensor import SENSOR_RANGE, stable_seed, synthetic_trace
from federation.clock import SimClock
from federation.telemetry import LDPHeader, Reading, ReadingBatch, encode_batch, readings_topic, status_topic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Broker:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class DeviceConfig:
    device_id: str
    gateway: str
    seed: int
    days: float
    ldp_mechanism: str = "hybrid"  # or "none" to switch local DP off (studies only)
    ldp_epsilon: float | None = 8.0
    batch_size: int = 1
    interval_s: int = 300

    def ldp_spec(self) -> LDPSpec | None:
        if self.ldp_mechanism == "none":
            return None
        return LDPSpec(mechanism=self.ldp_mechanism, epsilon=float(self.ldp_epsilon), lo=SENSOR_RANGE[0],
                       hi=SENSOR_RANGE[1])


@dataclass
class DeviceStats:
    sampled: int = 0
    published: int = 0  # readings acknowledged by the broker (PUBACK)
    reconnects: int = 0
    done: bool = False
    errors: list[str] = field(default_factory=list)


async def run_device(cfg: DeviceConfig, clock: SimClock, broker: Broker, stats: DeviceStats) -> None:
    """Sample the whole trace on the simulated clock and publish every reading exactly once (QoS 1)."""
    spec = cfg.ldp_spec()
    header = LDPHeader(mechanism=cfg.ldp_mechanism, epsilon=spec.epsilon if spec else None,
                       lo=SENSOR_RANGE[0], hi=SENSOR_RANGE[1])
    times, _true_bg, cgm = synthetic_trace(seed=cfg.seed, patient=cfg.device_id, start=int(clock.sim_start),
                                           days=cfg.days, interval_s=cfg.interval_s)
    noise_rng = np.random.default_rng(stable_seed(cfg.seed + 1, cfg.device_id))
    released = cgm if spec is None else privatize(cgm, spec=spec, rng=noise_rng)
    queue: asyncio.Queue[Reading | None] = asyncio.Queue()

    async def sample() -> None:
        for seq, (t, value) in enumerate(zip(times, released, strict=True)):
            await clock.sleep_until(float(t))
            queue.put_nowait(Reading(seq=seq, t=int(t), value=float(value)))
            stats.sampled += 1
        queue.put_nowait(None)

    sampler = asyncio.create_task(sample())
    try:
        await _publish_forever(cfg, broker, header, queue, stats)
    finally:
        sampler.cancel()
    stats.done = True


async def _publish_forever(cfg: DeviceConfig, broker: Broker, header: LDPHeader,
                           queue: asyncio.Queue[Reading | None], stats: DeviceStats) -> None:
    topic = readings_topic(cfg.gateway, cfg.device_id)
    status = status_topic(cfg.gateway, cfg.device_id)
    will = aiomqtt.Will(status, json.dumps({"state": "offline"}).encode(), qos=1, retain=True)
    pending: list[Reading] = []
    finished = False
    backoff = 0.2
    while True:
        try:
            async with aiomqtt.Client(broker.host, broker.port, identifier=cfg.device_id,
                                      username=broker.username, password=broker.password,
                                      clean_session=False, will=will, timeout=10) as client:
                backoff = 0.2
                await client.publish(status, json.dumps({"state": "online"}).encode(), qos=1, retain=True)
                while True:
                    if not pending:
                        item = await queue.get()
                        if item is None:
                            finished = True
                        else:
                            pending.append(item)
                    while not finished and len(pending) < cfg.batch_size and not queue.empty():
                        item = queue.get_nowait()
                        if item is None:
                            finished = True
                        else:
                            pending.append(item)
                    if pending:
                        batch = ReadingBatch(device=cfg.device_id, ldp=header, readings=tuple(pending))
                        await client.publish(topic, encode_batch(batch), qos=1)
                        stats.published += len(pending)
                        pending = []
                    if finished:
                        await client.publish(status, json.dumps({"state": "done"}).encode(), qos=1, retain=True)
                        return
        except aiomqtt.MqttError as exc:
            stats.reconnects += 1
            delay = backoff * random.uniform(0.5, 1.5)
            log.warning("%s: broker unreachable (%s); retrying in %.2fs", cfg.device_id, exc, delay)
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, 30.0)
