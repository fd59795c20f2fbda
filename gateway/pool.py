"""`wearfed hospital pool --spec FILE`: many hospital participants in one process, for large federations.

Each node keeps everything a lone `hospital run` has: its own Ed25519 key, state directory, privacy history,
outbox and enrollment. What the pool shares is the process (one torch import instead of fifty), one poll of
the cloud's current round per interval instead of one per node, and a small number of training slots, so
fifty participants on a 2-core machine train one or two at a time instead of thrashing.

The spec is JSON: ``{"nodes": [{"id": "h-001", "data": "h-001/clinical.csv", "state_dir": "h-001",
"enroll_token": "..."}, ...]}``; relative paths resolve against the spec's directory. Keep the file private:
it holds one-time enrollment tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import httpx

from federation.errors import ConfigError
from federation.windows import windows_from_series
from gateway.daemon import install_stop_signals, write_json_atomic
from gateway.hospital import load_clinical_csv
from gateway.node import NodeConfig, ParticipantNode

log = logging.getLogger(__name__)
STATUS_SECONDS = 2.0


def load_pool_spec(path: Path) -> list[dict]:
    """The spec's node list with absolute paths; raises ConfigError naming the bad entry."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the pool spec: {exc}") from exc
    nodes = doc.get("nodes") if isinstance(doc, dict) else None
    if not isinstance(nodes, list) or not nodes:
        raise ConfigError(f"{path}: 'nodes' must be a non-empty list")
    seen: set[str] = set()
    out = []
    for i, node in enumerate(nodes):
        missing = [k for k in ("id", "data", "state_dir") if not isinstance(node, dict) or not node.get(k)]
        if missing:
            raise ConfigError(f"{path}: nodes[{i}] is missing {', '.join(missing)}")
        if node["id"] in seen:
            raise ConfigError(f"{path}: nodes[{i}].id {node['id']!r} is repeated")
        seen.add(node["id"])
        out.append({"id": node["id"], "data": path.parent / node["data"],
                    "state_dir": path.parent / node["state_dir"], "enroll_token": node.get("enroll_token") or ""})
    return out


def build_nodes(spec: list[dict], template: NodeConfig) -> list[tuple[ParticipantNode, dict]]:
    """One participant node per spec entry, trained on that entry's clinical CSV (read once, here)."""
    nodes = []
    for entry in spec:
        series = load_clinical_csv(entry["data"])
        x, y = windows_from_series(series.values())
        cfg = replace(template, participant_id=entry["id"], state_dir=entry["state_dir"],
                      enroll_token=entry["enroll_token"])
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        node = ParticipantNode(cfg, lambda _cutoff, x=x, y=y: (x, y))
        nodes.append((node, {"patients": len(series), "windows": len(x), "data": str(entry["data"])}))
    return nodes


async def run_pool(nodes: list[tuple[ParticipantNode, dict]], *, training_slots: int = 1,
                   poll_seconds: float = 0.5) -> None:
    """Serve rounds for every node until SIGTERM; at most `training_slots` nodes answer at once."""
    stop = asyncio.Event()
    install_stop_signals(stop)
    slots = asyncio.Semaphore(training_slots)
    inflight: dict[str, asyncio.Task] = {}

    def write_status() -> None:
        for node, facts in nodes:
            write_json_atomic(node.cfg.state_dir / "status.json", {
                "updated": time.time(), "kind": "hospital", "pool_pid": os.getpid(), **facts, **node.status()})

    async def answer(node: ParticipantNode, rnd: dict) -> None:
        async with slots:
            await node.serve_round(rnd)

    async def report() -> None:
        while True:
            await asyncio.to_thread(write_status)
            await asyncio.sleep(STATUS_SECONDS)

    reporter = asyncio.create_task(report())
    await asyncio.gather(*(node.enroll_until_ready(stop) for node, _ in nodes))
    log.info("pool of %d hospitals enrolled", len(nodes))
    poller = nodes[0][0]
    while not stop.is_set():
        rnd = await poller.poll_round()
        for node, _ in nodes:
            pid = node.cfg.participant_id
            if pid in inflight and inflight[pid].done():
                inflight.pop(pid).result()  # serve_round handles round errors; anything else is a bug: raise
            if pid not in inflight and node.should_answer(rnd):
                inflight[pid] = asyncio.create_task(answer(node, rnd))
            elif pid not in inflight and node.state.outbox:
                with contextlib.suppress(httpx.TransportError):
                    await node.flush_outbox()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=poll_seconds)
    log.info("pool stopping: letting %d in-flight rounds finish", len(inflight))
    with contextlib.suppress(TimeoutError):  # each submission is checkpointed in its node's outbox first
        await asyncio.wait_for(asyncio.gather(*inflight.values(), return_exceptions=True), timeout=5)
    reporter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reporter
    write_status()
    for node, _ in nodes:
        await node.aclose()
