"""`wearfed hospital pool --spec FILE`: many hospital participants in one process, for large federations.

Each node keeps everything a lone `hospital run` has: its own Ed25519 key, state directory, privacy history,
outbox and enrollment. What the pool shares is the process (one torch import instead of fifty), one poll of the
cloud's current round per interval instead of one per node, one request for all its nodes' answers to a
secure-aggregation phase (`gateway.secagg_batch`) and one for their acknowledgements of the audit log (each still
signed by its own node), and a small number of training slots, so fifty participants on a 2-core machine train one
or two at a time instead of thrashing. With `--ray auto|ADDRESS` each training is a Ray task instead
(`sim.executors.RayExecutor`), so `--training-slots` nodes train at once on the cluster's cores: the nodes' training
windows then go to the cluster's object store, so use only a cluster inside the hospitals' own trust boundary (the
scale study's local one, say).

The spec is JSON: ``{"nodes": [{"id": "h-001", "data": "h-001/clinical.csv", "state_dir": "h-001",
"enroll_token": "..."}, ...]}``; relative paths resolve against the spec's directory. Keep the file private:
it holds one-time enrollment tokens.

Consent: each node has its own `gateway.hospital_consent.HospitalConsent` in its state directory, as a lone node
does; `wearfed hospital withdraw --state-dir <node's> --data <node's>` writes the tombstone, the pool rebuilds that
node's windows without the patient within one status interval, before its next round, and sends the counts-only
report to the cloud under that node's key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from federation.errors import ConfigError
from federation.responses import PublicRound
from federation.status import HospitalStatus
from federation.windows import windows_from_series
from gateway.consent import send_reports
from gateway.daemon import install_stop_signals, write_json_atomic
from gateway.hospital import check_clinical_data
from gateway.hospital_consent import HospitalConsent
from gateway.node import NodeConfig, ParticipantNode, next_poll
from gateway.secagg_batch import step_together
from gateway.witness import LogWitnessAlarm, acknowledge_together

if TYPE_CHECKING:
    from sim.executors import Executor

log = logging.getLogger(__name__)
STATUS_SECONDS = 2.0
EXCHANGES = 8  # nodes' exchanges with the cloud in flight at once (when a batch falls back to one by one)


async def at_most(limit: int, calls: list[Coroutine[object, object, None]]) -> None:
    """Await `calls` with at most `limit` running at once (each node's waits on the cloud overlap the others')."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Coroutine[object, object, None]) -> None:
        async with gate:
            await call

    await asyncio.gather(*(one(c) for c in calls))


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
        if bool(node.get("region")) != bool(node.get("region_url")):
            raise ConfigError(f"{path}: nodes[{i}] needs both region and region_url, or neither")
        out.append({"id": node["id"], "data": path.parent / node["data"],
                    "state_dir": path.parent / node["state_dir"], "enroll_token": node.get("enroll_token") or "",
                    "region": node.get("region"), "region_url": node.get("region_url")})
    return out


class ConsentedWindows:
    """One pool node's training windows: its clinical series without the patients who withdrew, rebuilt when the
    node's tombstone file changes (`refresh`)."""

    def __init__(self, series: dict, consent: HospitalConsent, data: Path) -> None:
        self.series, self.consent, self.data = series, consent, data
        self.mtime: int | None = None
        self.refresh()

    def refresh(self) -> bool:
        """Rebuild after a withdrawal; True when something changed."""
        if self.consent.mtime() == self.mtime:
            return False
        self.mtime = self.consent.mtime()
        kept = self.consent.keep(self.series)
        self.withdrawn = len(self.series) - len(kept)
        self.windows = windows_from_series(kept, resampled=True)
        self.patients = len(kept)
        return True

    def __call__(self, _cutoff: float | None) -> object:
        self.refresh()  # a tombstone written since the last status write counts for this round already
        return self.windows  # clinical data is historical: every window is available to every round

    def facts(self) -> dict:
        return {"patients": self.patients, "windows": len(self.windows), "withdrawn_patients": self.withdrawn,
                "consent_reports_pending": len(self.consent.pending_reports()), "data": str(self.data)}


def build_nodes(spec: list[dict], template: NodeConfig, *, trainer: Executor | None = None
                ) -> list[tuple[ParticipantNode, ConsentedWindows]]:
    """One participant node per spec entry, trained on that entry's clinical CSV (read once, here) without the
    patients withdrawn in its state directory; `trainer`: where the nodes' trainings run (None: in this process)."""
    nodes = []
    for entry in spec:
        series = check_clinical_data(entry["data"]).data.series  # refuses a file that gives no window
        cfg = replace(template, participant_id=entry["id"], state_dir=entry["state_dir"],
                      enroll_token=entry["enroll_token"], region=entry.get("region") or template.region,
                      region_url=entry.get("region_url") or template.region_url)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        source = ConsentedWindows(series, HospitalConsent(cfg.state_dir), entry["data"])
        nodes.append((ParticipantNode(cfg, source, trainer=trainer), source))
    return nodes


async def run_pool(nodes: list[tuple[ParticipantNode, ConsentedWindows]], *, training_slots: int = 1,
                   poll_seconds: float = 0.5) -> None:
    """Serve rounds for every node until SIGTERM; at most `training_slots` nodes train at once."""
    stop = asyncio.Event()
    install_stop_signals(stop)
    slots = asyncio.Semaphore(training_slots)  # held while a node trains, not while it encrypts or waits on the cloud
    for node, _ in nodes:
        node.training_slots = slots
    inflight: dict[str, asyncio.Task] = {}

    def write_status() -> None:
        for node, source in nodes:
            if source.refresh():  # `wearfed hospital withdraw` wrote a tombstone in this node's state directory
                log.warning("hospital %s: consent withdrawn; windows rebuilt without %d patient(s)",
                            node.cfg.participant_id, source.withdrawn)
            doc = HospitalStatus(updated=time.time(), pool_pid=os.getpid(), **source.facts(), **node.status())
            write_json_atomic(node.cfg.state_dir / "status.json", doc.model_dump(mode="json"), durable=False)

    async def report() -> None:
        while True:
            await asyncio.to_thread(write_status)
            await asyncio.sleep(STATUS_SECONDS)

    reporter = asyncio.create_task(report())
    senders = [asyncio.create_task(send_reports(source.consent, node, stop)) for node, source in nodes]
    await asyncio.gather(*(node.enroll_until_ready(stop) for node, _ in nodes))
    log.info("pool of %d hospitals enrolled", len(nodes))
    def starts(node: ParticipantNode, rnd: PublicRound | None) -> bool:  # about to answer (not already answering)
        return node.cfg.participant_id not in inflight and node.should_answer(rnd)

    poller = nodes[0][0]
    while not stop.is_set():
        started = asyncio.get_running_loop().time()
        rnd = await poller.poll_round()
        try:  # one witness of the cloud's audit log for the process (gateway/witness.py), before any answer
            if not await poller.witness.check(poller.cloud, force=any(starts(n, rnd) for n, _ in nodes)):
                rnd = None
        except LogWitnessAlarm:
            break  # forked or rolled back: the alarm file and a critical log line say so; answer nothing more
        if rnd is not None and poller.witness.seen is not None:  # each node acknowledges the shared witness's check
            seen = poller.witness.seen
            await acknowledge_together([(node.witness, starts(node, rnd)) for node, _ in nodes[1:]], seen,
                                       poller.cloud)
        for node, _ in nodes:
            pid = node.cfg.participant_id
            if pid in inflight and inflight[pid].done():
                inflight.pop(pid).result()  # serve_round handles round errors; anything else is a bug: raise
        for node, _ in nodes:  # training overlaps the phases before input (ParticipantNode.train_ahead)
            node.train_ahead(rnd)
        if rnd is not None:  # secure aggregation's phases other than input, the nodes' answers in one batch
            idle = [node.secagg for node, _ in nodes if node.cfg.participant_id not in inflight]
            await step_together(idle, rnd, poller.cloud, one_by_one=lambda due, r=rnd: at_most(
                EXCHANGES, [c.step(r) for c in due]))
        for node, _ in nodes:
            pid = node.cfg.participant_id
            if pid not in inflight and node.should_answer(rnd):
                inflight[pid] = asyncio.create_task(node.serve_round(rnd))
            elif pid not in inflight and node.state.outbox:
                with contextlib.suppress(httpx.TransportError):
                    await node.flush_outbox()
        await next_poll(stop, started, poll_seconds)
    log.info("pool stopping: letting %d in-flight rounds finish", len(inflight))
    with contextlib.suppress(TimeoutError):  # each submission is checkpointed in its node's outbox first
        await asyncio.wait_for(asyncio.gather(*inflight.values(), return_exceptions=True), timeout=5)
    for task in (reporter, *senders):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    write_status()
    for node, _ in nodes:
        await node.aclose()
