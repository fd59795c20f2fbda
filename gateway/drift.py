"""The gateway's drift reporter: signed histograms of its stored (already privatised) readings, per time window.

Reading time is cut into fixed windows of `window_s` seconds aligned to the Unix epoch (the simulated clock in
replays, so reports do not depend on the acceleration). A window is reported once the newest stored reading
is `grace_s` past its end (late store-and-forward readings mostly in), as the counts of its readings in the
fixed bins of `federation.drift` — counts only, of values that were privatised on the device. The next
window to report is kept in `drift.json`; a resend carries the same `report_id`, so the cloud counts it once.
The reporter reads the store through its own read-only SQLite connection (WAL allows a concurrent reader).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import httpx

from federation.drift import DRIFT_DOMAIN, histogram
from federation.runtime import atomic_write_json
from federation.signing import sign
from gateway.cloud_client import CloudRejected

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftSettings:
    window_s: float = 6 * 3600.0  # reading time per report
    grace_s: float = 1800.0  # wait this long (reading time) past a window's end before reporting it
    interval_s: float = 2.0  # wall seconds between checks for completed windows


DEFAULT_DRIFT = DriftSettings()


class DriftReporter:
    def __init__(self, participant_id: str, key, db_path: Path, state_dir: Path,  # noqa: ANN001 - Ed25519 key
                 settings: DriftSettings = DEFAULT_DRIFT) -> None:
        if settings.window_s <= 0 or settings.grace_s < 0 or settings.interval_s <= 0:
            raise ValueError(f"drift settings must be positive: {settings}")
        self.participant_id, self.key, self.db_path, self.settings = participant_id, key, db_path, settings
        self.path = state_dir / "drift.json"
        self.next_start: float | None = json.loads(self.path.read_text())["next_start"] if self.path.exists() else None
        self.sent = 0

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        if not self.db_path.exists():
            return []
        with contextlib.closing(sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)) as db:
            try:
                return db.execute(sql, args).fetchall()
            except sqlite3.OperationalError:  # the ingest has not created its tables yet
                return []

    def due(self) -> list[tuple[float, float]]:
        """Completed windows not reported yet, oldest first."""
        rows = self._query("SELECT MIN(t), MAX(t) FROM readings WHERE stream = 'glucose'")
        if not rows or rows[0][0] is None:
            return []
        lo, hi = rows[0]
        w = self.settings.window_s
        start = self.next_start if self.next_start is not None else (lo // w) * w
        out = []
        while start + w + self.settings.grace_s <= hi:
            out.append((start, start + w))
            start += w
        return out

    def report(self, start: float, end: float) -> dict:
        values = [v for (v,) in self._query("SELECT value FROM readings WHERE stream = 'glucose' AND t >= ? AND t < ?",
                                            (start, end))]
        doc = {"participant": self.participant_id, "t_start": float(start), "t_end": float(end),
               "counts": histogram(values), "report_id": f"{self.participant_id}-{int(start)}-{int(end)}"}
        return {**doc, "signature": sign(self.key, doc, domain=DRIFT_DOMAIN)}

    def _advance(self, end: float) -> None:
        self.next_start = end
        atomic_write_json(self.path, {"next_start": end})

    async def send_due(self, cloud) -> int:  # noqa: ANN001 - gateway.cloud_client.CloudClient
        """Send every completed window; returns how many were acknowledged. Transport errors propagate."""
        sent = 0
        for start, end in await asyncio.to_thread(self.due):
            body = await asyncio.to_thread(self.report, start, end)
            if sum(body["counts"]):
                try:
                    out = (await cloud.request("POST", "/v1/drift/reports", json=body)).json()
                    sent += 1
                    if out.get("alert"):
                        log.warning("%s: cloud reports drift for [%s, %s): KL %.3f nats", self.participant_id,
                                    start, end, out.get("kl_nats"))
                except CloudRejected as exc:  # a bad report will not get better by resending it
                    log.error("%s: drift report [%s, %s) rejected: %s", self.participant_id, start, end, exc)
            self._advance(end)
        self.sent += sent
        return sent

    async def run(self, node, stop: asyncio.Event) -> None:  # noqa: ANN001 - gateway.node.ParticipantNode
        """Every `interval_s`, once the node is enrolled, send the windows that completed."""
        while not stop.is_set():
            if node.enrolled:
                try:
                    await self.send_due(node.cloud)
                except httpx.TransportError as exc:
                    log.warning("%s: drift report not sent (%s); retrying", self.participant_id, exc)
                except Exception:  # drift reporting must never stop the gateway
                    log.exception("%s: drift reporter failed", self.participant_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.interval_s)

    def status(self) -> dict:
        return {"drift_reports_sent": self.sent, "drift_next_window_start": self.next_start}
