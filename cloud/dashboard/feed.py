"""The dashboard's live change feed, as server-sent events: the audit ledger is the change feed.

Every state change the dashboard shows is committed together with an audit entry (`cloud.store`), so a stream that
polls the ledger's newest sequence number (every `interval_s`, one indexed query) sees every change without touching
the units that make them. For each batch of new entries it sends one ``change`` event naming the topics they touch
(rounds, privacy, participants, ...), only those the caller's role may read (`TOPIC_PERMISSION`, checked against
`cloud.rbac`), and the entries themselves only to roles that may read the audit ledger. The page then re-reads the
topics' routes, so what it shows is always what the API answers that role.

A stream lives `lifetime_s` and then ends (the page reconnects at once with ``Last-Event-ID``, the last sequence number
it saw, and is sent what it missed), so a server that stops never waits long for open streams; the caller's token is
checked again every `reauth_s`, so a disabled user's stream ends.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from sqlalchemy import func, select

from cloud import rbac
from cloud.access import Access, Principal
from cloud.errors import CloudError
from cloud.record_db import Event
from cloud.store import Store

# topic -> the permission that lets a role read the routes behind it
TOPIC_PERMISSION = {
    "rounds": "round.read", "models": "round.read", "drift": "round.read", "participants": "participant.list",
    "privacy": "privacy.read", "alerts": "alerts.read", "approvals": "approval.read", "audit": "audit.read",
}
# audit entry kind (prefix) -> topics it touches; every entry also touches "audit"
KIND_TOPICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("update.accepted", ("rounds", "privacy", "participants")),
    ("update.", ("rounds", "alerts")),
    ("refusal.", ("rounds", "alerts")),
    ("round.", ("rounds", "models")),
    ("secagg.", ("rounds",)),
    ("aggregate.", ("rounds",)),
    ("model.", ("models", "rounds")),
    ("gates.", ("rounds", "models")),
    ("promotion.", ("rounds", "models")),
    ("rollback.", ("rounds", "models")),
    ("evaluation", ("rounds", "models")),
    ("release.", ("models",)),
    ("budget.", ("alerts", "participants", "privacy")),
    ("participant.", ("participants", "privacy")),
    ("config.", ("participants", "privacy")),
    ("approval.", ("approvals", "participants")),
    ("drift.", ("drift", "alerts")),
    ("enrollment", ("alerts",)),
    ("access.", ("alerts",)),
)
MAX_ENTRIES = 500  # per event; a client further behind is told to re-read everything


def topics_of(kind: str) -> set[str]:
    out = {"audit"}
    for prefix, topics in KIND_TOPICS:
        if kind.startswith(prefix):
            out.update(topics)
            break
    return out


def visible_topics(role: str, topics: set[str]) -> list[str]:
    return sorted(t for t in topics if rbac.allowed(role, TOPIC_PERMISSION[t]))


def sse(event: str, data: dict, *, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n"


class ChangeFeed:
    def __init__(self, store: Store, access: Access, *, interval_s: float = 0.2, lifetime_s: float = 20.0,
                 heartbeat_s: float = 10.0, reauth_s: float = 5.0) -> None:
        self.store = store
        self.access = access
        self.interval_s = interval_s
        self.lifetime_s = lifetime_s
        self.heartbeat_s = heartbeat_s
        self.reauth_s = reauth_s

    def latest_seq(self) -> int:
        with self.store.read() as s:
            seq = s.scalar(select(func.max(Event.seq)))
        return -1 if seq is None else int(seq)

    def entries_after(self, seq: int, *, limit: int = MAX_ENTRIES + 1) -> list[dict]:
        with self.store.read() as s:
            rows = s.scalars(select(Event).where(Event.seq > seq).order_by(Event.seq).limit(limit))
            return [{"seq": e.seq, "at": e.at, "kind": e.kind, "actor": e.actor, "detail": e.detail} for e in rows]

    def change(self, role: str, entries: list[dict]) -> dict | None:
        """The ``change`` event for `role` about `entries` (None if it touches nothing the role may read)."""
        truncated = len(entries) > MAX_ENTRIES
        topics: set[str] = set(TOPIC_PERMISSION) if truncated else set()
        for e in entries:
            topics |= topics_of(e["kind"])
        visible = visible_topics(role, topics)
        if not visible:
            return None
        doc: dict = {"seq": entries[-1]["seq"], "topics": visible, "truncated": truncated}
        if rbac.allowed(role, "audit.read"):
            doc["entries"] = entries[-MAX_ENTRIES:]
        return doc

    async def stream(self, p: Principal, authorization: str, *, path: str, last_seq: int | None
                     ) -> AsyncIterator[str]:
        """The event stream of one caller: ``hello``, then ``change`` events as the ledger grows, ``: ping``
        comments, and ``bye`` when its lifetime ends or its token stops working."""
        seq = await asyncio.to_thread(self.latest_seq)
        yield f"retry: 1000\n{sse('hello', {'user': p.name, 'role': p.role, 'interval_s': self.interval_s})}"
        if last_seq is not None and last_seq < seq:  # a reconnect: what it missed
            seq = last_seq
        start = last_ping = last_auth = time.monotonic()
        while True:
            newest = await asyncio.to_thread(self.latest_seq)
            if newest > seq:
                entries = await asyncio.to_thread(self.entries_after, seq)
                if entries:
                    seq = entries[-1]["seq"] if len(entries) <= MAX_ENTRIES else newest
                    doc = self.change(p.role, entries)
                    if doc is not None:
                        yield sse("change", doc, event_id=seq)
                        last_ping = time.monotonic()
            now = time.monotonic()
            if now - start >= self.lifetime_s:
                yield sse("bye", {"reason": "lifetime", "reconnect": True}, event_id=seq)
                return
            if now - last_auth >= self.reauth_s:
                last_auth = now
                try:
                    await asyncio.to_thread(self.access.authorize, authorization, "dashboard.read", path=path)
                except CloudError as exc:
                    yield sse("bye", {"reason": exc.reason, "reconnect": False})
                    return
            if now - last_ping >= self.heartbeat_s:
                last_ping = now
                yield ": ping\n\n"
            await asyncio.sleep(self.interval_s)
