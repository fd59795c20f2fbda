"""`wearfed gateway run`: MQTT ingest into the local store plus the participant loop, until SIGTERM.

`wearfed gateway ingest` runs the ingest alone (no federation). Both write `status.json` in the state
directory every second (atomically): counts, rounds answered, privacy spent, last model relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from federation.windows import NO_DENOISE, Denoise, windows_from_series
from gateway.drift import DEFAULT_DRIFT, DriftReporter, DriftSettings
from gateway.ingest import DEFAULT_MAX_FUTURE_S, ingest_forever
from gateway.node import NodeConfig, ParticipantNode
from gateway.registry import DeviceRegistry
from gateway.relay import ModelRelay
from gateway.store import ReadingStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestConfig:
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    username: str | None = None
    password: str | None = None
    devices_file: Path | None = None
    max_future_s: float = DEFAULT_MAX_FUTURE_S
    release_key: str | None = None  # base64 Ed25519 key that signs model releases; None: trust on first use


def store_windows(store: ReadingStore, cutoff: float | None, denoise: Denoise = NO_DENOISE
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Training windows from every device's readings on the 5-min grid, up to `cutoff`."""
    return windows_from_series(store.series().values(), cutoff=cutoff, denoise=denoise)


def write_json_atomic(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def open_registry(state_dir: Path, devices_file: Path | None) -> DeviceRegistry:
    """`--devices-file`, else `<state-dir>/devices.txt` if provisioned there, else an open registry (warned)."""
    if devices_file is None and (state_dir / "devices.txt").exists():
        devices_file = state_dir / "devices.txt"
    return DeviceRegistry(devices_file)


def node_status(node: ParticipantNode | None) -> dict:
    return {} if node is None else node.status()


async def stop_node(node_task: asyncio.Task, node: ParticipantNode) -> None:
    """Let an in-flight round finish (its submission is checkpointed in the outbox first), then cancel.

    A node still trying to enroll has nothing in hand and is cancelled at once.
    """
    try:
        await asyncio.wait_for(asyncio.shield(node_task), timeout=5 if node.enrolled else 0.1)
    except TimeoutError:
        node_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await node_task
    except Exception:
        log.exception("participant loop failed")


async def run_gateway(cfg: NodeConfig, ingest_cfg: IngestConfig, *, denoise: Denoise = NO_DENOISE,
                      drift: DriftSettings | None = DEFAULT_DRIFT) -> None:
    """Ingest plus the participant loop (train, submit, relay new models) and drift reports until SIGTERM."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    store = ReadingStore(cfg.state_dir / "readings.sqlite")
    relay = ModelRelay(cfg.participant_id, cfg.state_dir, host=ingest_cfg.broker_host, port=ingest_cfg.broker_port,
                       username=ingest_cfg.username, password=ingest_cfg.password,
                       release_key=ingest_cfg.release_key)
    node = ParticipantNode(cfg, lambda cutoff: store_windows(store, cutoff, denoise), on_round=relay.after_round)
    reporter = None if drift is None else DriftReporter(cfg.participant_id, node.key, cfg.state_dir / "readings.sqlite",
                                                        cfg.state_dir, drift)
    await _serve(cfg.participant_id, cfg.state_dir, ingest_cfg, store, node=node, relay=relay, drift=reporter)


async def run_ingest(gateway: str, state_dir: Path, ingest_cfg: IngestConfig) -> None:
    """Ingest only (no federation) until SIGTERM."""
    state_dir.mkdir(parents=True, exist_ok=True)
    await _serve(gateway, state_dir, ingest_cfg, ReadingStore(state_dir / "readings.sqlite"), node=None, relay=None)


async def _serve(gateway: str, state_dir: Path, ingest_cfg: IngestConfig, store: ReadingStore, *,
                 node: ParticipantNode | None, relay: ModelRelay | None, drift: DriftReporter | None = None) -> None:
    registry = open_registry(state_dir, ingest_cfg.devices_file)
    stop = asyncio.Event()
    install_stop_signals(stop)
    subscribed = asyncio.Event()
    ingest = asyncio.create_task(ingest_forever(
        store, gateway, host=ingest_cfg.broker_host, port=ingest_cfg.broker_port, username=ingest_cfg.username,
        password=ingest_cfg.password, registry=registry, max_future_s=ingest_cfg.max_future_s, ready=subscribed))

    def status() -> dict:
        return {"updated": time.time(), "kind": "gateway", "pid": os.getpid(), "subscribed": subscribed.is_set(),
                "registry_devices": None if registry.open else len(registry), **store.counts(),
                **node_status(node), **(relay.status() if relay else {}), **(drift.status() if drift else {})}

    async def report() -> None:
        while True:
            write_json_atomic(state_dir / "status.json", status())
            await asyncio.sleep(1.0)

    reporter = asyncio.create_task(report())
    node_task = asyncio.create_task(node.run(stop)) if node else None
    drift_task = asyncio.create_task(drift.run(node, stop)) if drift and node else None
    await stop.wait()
    log.info("gateway %s stopping", gateway)
    if node_task is not None:
        await stop_node(node_task, node)
    tasks = [t for t in (ingest, reporter, drift_task) if t is not None]
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    write_json_atomic(state_dir / "status.json", {**status(), "stopped": True})
    if node is not None:
        await node.aclose()
    store.close()
