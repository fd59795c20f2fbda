"""`wearfed gateway run`: MQTT ingest into the local store plus the participant loop, until SIGTERM."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path

import numpy as np

from federation.windows import windows_from_series
from gateway.ingest import ingest_forever
from gateway.node import NodeConfig, ParticipantNode
from gateway.store import ReadingStore

log = logging.getLogger(__name__)


def store_windows(store: ReadingStore, cutoff: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Training windows from every device's readings on the 5-min grid, up to `cutoff`."""
    return windows_from_series(store.series().values(), cutoff=cutoff)


def write_json_atomic(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def run_gateway(cfg: NodeConfig, *, broker_host: str, broker_port: int, username: str | None = None,
                      password: str | None = None) -> None:
    store = ReadingStore(cfg.state_dir / "readings.sqlite")
    node = ParticipantNode(cfg, lambda cutoff: store_windows(store, cutoff))
    stop = asyncio.Event()
    install_stop_signals(stop)
    ingest = asyncio.create_task(ingest_forever(store, cfg.participant_id, host=broker_host, port=broker_port,
                                                username=username, password=password))

    async def report() -> None:
        while True:
            write_json_atomic(cfg.state_dir / "status.json",
                              {"updated": time.time(), **store.counts(), "answered": node.state.answered})
            await asyncio.sleep(1.0)

    reporter = asyncio.create_task(report())
    node_task = asyncio.create_task(node.run(stop))
    await stop.wait()
    log.info("gateway %s stopping", cfg.participant_id)
    # Work in hand is checkpointed in the node's outbox; give an in-flight submission a moment to finish.
    try:
        await asyncio.wait_for(asyncio.shield(node_task), timeout=5)
    except (TimeoutError, Exception):
        node_task.cancel()
    for task in (ingest, reporter):
        task.cancel()
    write_json_atomic(cfg.state_dir / "status.json",
                      {"updated": time.time(), **store.counts(), "answered": node.state.answered})
    await node.aclose()
    store.close()
