"""The gateway's local reading store: SQLite in WAL mode, one row per (device, sequence), plus a quarantine.

Every write is one transaction committed with `synchronous=FULL` before the method returns, so the ingest can
acknowledge an MQTT message as soon as `add_batch` or `quarantine` returns. One connection, shared by the MQTT
network thread and the asyncio loop, serialised by a lock.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np

from federation.telemetry import ReadingBatch

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    device TEXT NOT NULL, seq INTEGER NOT NULL, t INTEGER NOT NULL, value REAL NOT NULL,
    mechanism TEXT NOT NULL, epsilon REAL, lo REAL NOT NULL, hi REAL NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY, received REAL NOT NULL, topic TEXT NOT NULL, reason TEXT NOT NULL, payload BLOB,
    digest TEXT UNIQUE  -- sha256(topic, payload): a redelivered rejected message is kept once
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class ReadingStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _bump(self, name: str, by: int) -> None:
        self._db.execute(
            "INSERT INTO counters(name, value) VALUES(?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, by))

    def add_batch(self, batch: ReadingBatch) -> tuple[int, int]:
        """Store a batch durably (one transaction); returns (new readings, duplicates dropped)."""
        rows = [(batch.device, r.seq, r.t, r.value, batch.ldp.mechanism, batch.ldp.epsilon, batch.ldp.lo,
                 batch.ldp.hi) for r in batch.readings]
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            before = self._db.total_changes
            self._db.executemany("INSERT OR IGNORE INTO readings VALUES (?,?,?,?,?,?,?,?)", rows)
            new = self._db.total_changes - before
            self._bump("duplicates", len(rows) - new)
        return new, len(rows) - new

    def quarantine(self, topic: str, payload: bytes, reason: str) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            digest = hashlib.sha256(topic.encode() + b"\x00" + payload).hexdigest()
            self._db.execute("INSERT OR IGNORE INTO quarantine(received, topic, reason, payload, digest) "
                             "VALUES (?,?,?,?,?)", (time.time(), topic, reason[:500], payload[:65536], digest))

    def counts(self) -> dict[str, int]:
        with self._lock:
            return self._counts()

    def _counts(self) -> dict[str, int]:
        ingested = self._db.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
        devices = self._db.execute("SELECT COUNT(DISTINCT device) FROM readings").fetchone()[0]
        rejected = self._db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
        dup = self._db.execute("SELECT value FROM counters WHERE name='duplicates'").fetchone()
        return {"ingested": ingested, "devices": devices, "rejected": rejected, "duplicates": dup[0] if dup else 0}

    def quarantined(self) -> list[tuple[str, str]]:
        with self._lock:
            return self._db.execute("SELECT topic, reason FROM quarantine ORDER BY id").fetchall()

    def series(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Every device's readings as (times, values), ordered by time."""
        out: dict[str, tuple[list[int], list[float]]] = {}
        with self._lock:
            rows = self._db.execute("SELECT device, t, value FROM readings ORDER BY device, t").fetchall()
        for device, t, v in rows:
            ts, vs = out.setdefault(device, ([], []))
            ts.append(t)
            vs.append(v)
        return {d: (np.asarray(ts, dtype=np.int64), np.asarray(vs)) for d, (ts, vs) in out.items()}
