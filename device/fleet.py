"""Many devices in one process: two asyncio tasks and one MQTT connection per device, no thread per device."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from device.inference import DEFAULT_ALERT_CONFIDENCE
from device.profiles import Profile
from device.publisher import Broker, DeviceConfig, DeviceStats, run_device
from device.spool import Spool
from federation.clock import SimClock
from federation.runtime import atomic_write_json

log = logging.getLogger(__name__)


def fleet_configs(*, gateways: list[str], devices_per_gateway: int, seed: int, days: float, profile: Profile,
                  ldp_mechanism: str | None = None, ldp_epsilon: float | None = None,
                  daily_cap: float | None = None, batch_size: int | None = None,
                  credentials: dict[str, dict[str, str]] | None = None,
                  odometer_block: int = 12, random_sensor_age: bool = False,
                  trace_file: Path | None = None, release_key: str | None = None,
                  alert_confidence: float = DEFAULT_ALERT_CONFIDENCE, linger: bool = False,
                  mqtt_keepalive_s: int = 60, mqtt_timeout_s: float = 10.0,
                  privacy_rng: str = "secure", privacy_unit: str | None = None,
                  daily_budget: float | None = None) -> list[DeviceConfig]:
    """Device ids are ``<gateway>-devNNN``; `credentials` maps a device id to its username and password.

    With a profile that runs the forecaster, every device pins `release_key` (the cloud's release public key)
    and runs the model releases its gateway relays; `alert_confidence` is the clinician-set review threshold.
    """
    creds = credentials or {}
    out = []
    for gw in gateways:
        for k in range(1, devices_per_gateway + 1):
            dev = f"{gw}-dev{k:03d}"
            c = creds.get(dev, {})
            out.append(DeviceConfig(device_id=dev, gateway=gw, seed=seed, days=days, profile=profile,
                                    ldp_mechanism=ldp_mechanism, ldp_epsilon=ldp_epsilon, daily_cap=daily_cap,
                                    batch_size=batch_size, username=c.get("username"), password=c.get("password"),
                                    odometer_block=odometer_block, random_sensor_age=random_sensor_age,
                                    trace_file=trace_file, release_key=release_key,
                                    alert_confidence=alert_confidence, linger=linger,
                                    mqtt_keepalive_s=mqtt_keepalive_s, mqtt_timeout_s=mqtt_timeout_s,
                                    privacy_rng=privacy_rng, privacy_unit=privacy_unit,
                                    daily_budget=daily_budget))
    return out


def summary(stats: dict[str, DeviceStats]) -> dict:
    batteries = [s.battery for s in stats.values() if s.battery is not None]
    return {
        "updated": time.time(),
        "devices": len(stats),
        "sampled": sum(s.sampled for s in stats.values()),
        "published": sum(s.published for s in stats.values()),
        "reconnects": sum(s.reconnects for s in stats.values()),
        "done": sum(s.done for s in stats.values()),
        "dropped": sum(s.dropped for s in stats.values()),
        "gaps": sum(s.gaps for s in stats.values()),
        "suppressed": sum(s.suppressed for s in stats.values()),
        "buffered": sum(s.buffered for s in stats.values()),
        "battery_min": min(batteries) if batteries else None,
        "battery_depleted": sum(s.state == "battery-depleted" for s in stats.values()),
        "budget_exhausted": sum(s.state == "budget-exhausted" for s in stats.values()),
        "errors": sum(len(s.errors) for s in stats.values()),
        "models_loaded": sum(s.model_version is not None for s in stats.values()),
        "model_refusals": sum(sum(s.model_refusals.values()) for s in stats.values()),
        "forecasts": sum(s.alerts.get("forecasts", 0) for s in stats.values()),
        "hypo_alerts": sum(s.alerts.get("hypo_alerts", 0) for s in stats.values()),
        "hyper_alerts": sum(s.alerts.get("hyper_alerts", 0) for s in stats.values()),
        "reviews": sum(s.alerts.get("hypo_reviews", 0) + s.alerts.get("hyper_reviews", 0) for s in stats.values()),
        "privacy_rng": sorted({s.privacy_rng for s in stats.values()}),
    }


def write_status(path: Path, stats: dict[str, DeviceStats]) -> None:
    """Atomically write the fleet's counters (read by the replay orchestrator and operators)."""
    doc = summary(stats) | {"per_device": {k: asdict(v) for k, v in stats.items()}}
    atomic_write_json(path, doc)


def run_shards(argv: list[str], *, workers: int, state_dir: Path, wall_start: float,
               status_path: Path | None) -> int:
    """Run `wearfed fleet run` as `workers` processes, each with every workers-th device (one loop per core).

    Each shard keeps its own spool and odometers under ``state_dir/shard-<i>`` (same sharding after a
    restart with the same worker count); the parent merges the shards' counters into `status_path`.
    """
    procs, files = [], []
    for i in range(workers):
        shard_status = state_dir / f"status.shard{i}.json"
        files.append(shard_status)
        cmd = [sys.executable, "-m", "federation.cli", *argv, "--shard", str(i), "--wall-start", str(wall_start),
               "--state-dir", str(state_dir / f"shard-{i}"), "--status-file", str(shard_status)]
        procs.append(subprocess.Popen(cmd))

    def forward(signum: int, _frame: object) -> None:  # SIGTERM: every shard stops gracefully, then the parent
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    try:
        while any(p.poll() is None for p in procs):
            if status_path:
                _merge_status(files, status_path)
            time.sleep(1.0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
    if status_path:
        _merge_status(files, status_path)
    return max(p.returncode or 0 for p in procs)


def _merge_status(files: list[Path], path: Path) -> None:
    docs = []
    for f in files:
        try:
            docs.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue
    out: dict = {"updated": time.time(), "shards": len(files), "per_device": {}}
    for d in docs:
        for k, v in d.items():
            if k == "per_device":
                out["per_device"].update(v)
            elif k == "battery_min":
                vals = [x for x in (out.get(k), v) if x is not None]
                out[k] = min(vals) if vals else None
            elif isinstance(v, (int, float)) and k != "updated":
                out[k] = out.get(k, 0) + v
            elif k == "privacy_rng":
                out[k] = sorted(set(out.get(k, [])) | set(v))
    atomic_write_json(path, out)


async def run_fleet(configs: list[DeviceConfig], clock: SimClock, broker: Broker, *, state_dir: Path,
                    status_path: Path | None = None, connect_rate: float = 200.0,
                    stats: dict[str, DeviceStats] | None = None) -> dict[str, DeviceStats]:
    """Run every device to the end of its trace; starts at most `connect_rate` devices per wall second.

    `state_dir` keeps the spool (one SQLite file for the process), each device's privacy odometer and loaded
    model release; give the same directory to a restarted process and its devices resume where they stopped.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    spool = Spool(state_dir / "spool.sqlite", group_commit=True)
    stats = {} if stats is None else stats  # a caller's dict is filled in place (live counters, in-process)
    for c in configs:
        stats.setdefault(c.device_id, DeviceStats())
    committer = asyncio.create_task(spool.run_group_commit())

    async def report() -> None:
        while True:
            if status_path:
                write_status(status_path, stats)
            await asyncio.sleep(1.0)

    reporter = asyncio.create_task(report())
    tasks: list[asyncio.Task] = []
    stopping = False

    def stop() -> None:  # SIGTERM: devices stop where they are; the spool keeps what was not acknowledged
        nonlocal stopping
        stopping = True
        for t in tasks:
            t.cancel()

    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not in the main thread: no handler
        loop.add_signal_handler(signal.SIGTERM, stop)
    try:
        for i, cfg in enumerate(configs):
            if stopping:
                break
            tasks.append(asyncio.create_task(run_device(cfg, clock, broker, stats[cfg.device_id], spool=spool,
                                                        state_dir=state_dir)))
            if (i + 1) % max(1, int(connect_rate / 10)) == 0:
                await asyncio.sleep(0.1)
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)
        reporter.cancel()
        for t in tasks:
            t.cancel()
        committer.cancel()
        await asyncio.gather(committer, return_exceptions=True)
        spool.close()
    for cfg, res in zip(configs, results, strict=False):
        if isinstance(res, asyncio.CancelledError) and stopping:
            continue
        if isinstance(res, BaseException):
            stats[cfg.device_id].errors.append(repr(res))
            log.error("device %s stopped: %r", cfg.device_id, res)
    if status_path:
        write_status(status_path, stats)
    return stats
