"""Many devices in one process: one asyncio task and one MQTT connection per device, no thread per device."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

from device.publisher import Broker, DeviceConfig, DeviceStats, run_device
from federation.clock import SimClock

log = logging.getLogger(__name__)


def fleet_configs(*, gateways: list[str], devices_per_gateway: int, seed: int, days: float,
                  ldp_mechanism: str, ldp_epsilon: float | None, batch_size: int = 1) -> list[DeviceConfig]:
    return [
        DeviceConfig(device_id=f"{gw}-dev{k:03d}", gateway=gw, seed=seed, days=days, ldp_mechanism=ldp_mechanism,
                     ldp_epsilon=ldp_epsilon, batch_size=batch_size)
        for gw in gateways
        for k in range(1, devices_per_gateway + 1)
    ]


def write_status(path: Path, stats: dict[str, DeviceStats]) -> None:
    """Atomically write the fleet's counters (read by the replay orchestrator and operators)."""
    doc = {
        "updated": time.time(),
        "devices": len(stats),
        "sampled": sum(s.sampled for s in stats.values()),
        "published": sum(s.published for s in stats.values()),
        "reconnects": sum(s.reconnects for s in stats.values()),
        "done": sum(s.done for s in stats.values()),
        "per_device": {k: asdict(v) for k, v in stats.items()},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


async def run_fleet(configs: list[DeviceConfig], clock: SimClock, broker: Broker, *,
                    status_path: Path | None = None, connect_rate: float = 50.0) -> dict[str, DeviceStats]:
    """Run every device to the end of its trace; ramps connections at `connect_rate` per second."""
    stats = {c.device_id: DeviceStats() for c in configs}
    tasks = []
    for i, cfg in enumerate(configs):
        tasks.append(asyncio.create_task(run_device(cfg, clock, broker, stats[cfg.device_id])))
        if (i + 1) % max(1, int(connect_rate)) == 0:
            await asyncio.sleep(1.0)

    async def report() -> None:
        while True:
            if status_path:
                write_status(status_path, stats)
            await asyncio.sleep(1.0)

    reporter = asyncio.create_task(report())
    try:
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        reporter.cancel()
    for cfg, res in zip(configs, results, strict=True):
        if isinstance(res, BaseException):
            stats[cfg.device_id].errors.append(repr(res))
            log.error("device %s stopped: %r", cfg.device_id, res)
    if status_path:
        write_status(status_path, stats)
    return stats
