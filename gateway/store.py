"""The gateway's local reading store: SQLite in WAL mode, one row per (device, epoch, sequence), plus a quarantine.

Every write is one transaction committed with `synchronous=FULL` before the method returns, so the ingest can
acknowledge an MQTT message as soon as `add_batch` or `quarantine` returns. One connection, shared by the MQTT
network thread and the asyncio loop, serialised by a lock.

A reading is identified by (device, epoch, seq): the epoch is the device's boot identity (new whenever its state
was reset), so a re-imaged device that starts again at seq 0 is stored, not dropped as a duplicate. A redelivered
reading (same key, same time and value) is a duplicate and counted; the same key with a different time or value
is a conflict (a reset without a new epoch, or tampering): `add_batch` raises `DuplicateConflict` and stores
nothing, and the ingest quarantines the message with that reason. Nothing is ever dropped silently.

Consent and retention (`gateway.consent`): `withdraw` tombstones a device by pseudonym and deletes everything of it in
one transaction; a withdrawn device's later batches are dropped (counted) in the transaction that would store them.
`enforce_retention` deletes what was received before the period. Both zero the freed cells (secure_delete) and
truncate the write-ahead log, and queue a report of their counts for the cloud (``consent_reports``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np

from federation.consent import IRREVERSIBLE, pseudonym
from federation.errors import WearfedError
from federation.runtime import atomic_write_bytes
from federation.series import PatientSeries
from federation.telemetry import CARBS, GLUCOSE, INSULIN, ReadingBatch

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    device TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL, t INTEGER NOT NULL, value REAL NOT NULL,
    mechanism TEXT NOT NULL, epsilon REAL, lo REAL NOT NULL, hi REAL NOT NULL,
    stream TEXT NOT NULL DEFAULT 'glucose', unit TEXT NOT NULL DEFAULT 'reading', budget REAL,
    received REAL,  -- wall time the gateway stored it (retention counts from here)
    PRIMARY KEY (device, epoch, seq)
);
CREATE INDEX IF NOT EXISTS readings_time ON readings (t);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY, received REAL NOT NULL, topic TEXT NOT NULL, reason TEXT NOT NULL, payload BLOB,
    digest TEXT UNIQUE  -- sha256(topic, payload): a redelivered rejected message is kept once
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS withdrawn (pseudonym TEXT PRIMARY KEY, at REAL NOT NULL);  -- gateway.consent
CREATE TABLE IF NOT EXISTS consent_reports (  -- counts for the cloud's audit ledger, until acknowledged
    id TEXT PRIMARY KEY, created REAL NOT NULL, body TEXT NOT NULL, sent INTEGER NOT NULL DEFAULT 0
);
"""
LEGACY_EPOCH = 0  # readings stored before epochs existed (schema v1 stores) keep epoch 0


CONSENT_SECRET = "consent.secret"  # HMAC key of withdrawn devices' pseudonyms (federation.consent.pseudonym)


def _consent_secret(path: Path) -> bytes:
    """The gateway's pseudonym key: 32 random bytes (mode 0600), created with the store."""
    if not path.exists():
        atomic_write_bytes(path, secrets.token_bytes(32), mode=0o600)
    data = path.read_bytes()
    if len(data) != 32:
        raise WearfedError(f"{path} must hold 32 bytes (the gateway's pseudonym key), found {len(data)}")
    return data


class DuplicateConflict(WearfedError, ValueError):
    """A reading's (device, epoch, seq) is stored already with another time or value; nothing was stored."""


def _migrate(db: sqlite3.Connection) -> None:
    """An older store: readings keyed by (device, epoch, seq) (old rows epoch 0), with stream and privacy unit, and
    the time each was received (rows from before retention count as received at the migration)."""
    cols = [r[1] for r in db.execute("PRAGMA table_info(readings)")]
    if cols and "stream" in cols and "received" not in cols:
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ALTER TABLE readings ADD COLUMN received REAL")
            db.execute("UPDATE readings SET received = ?", (time.time(),))
        log.warning("reading store migrated: readings carry their receipt time (retention)")
        return
    if not cols or "stream" in cols:
        return
    with db:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ALTER TABLE readings RENAME TO readings_old")
        db.executescript(SCHEMA.split("CREATE TABLE IF NOT EXISTS quarantine")[0])
        epoch = "epoch" if "epoch" in cols else str(LEGACY_EPOCH)
        db.execute(f"INSERT INTO readings (device, epoch, seq, t, value, mechanism, epsilon, lo, hi, received) SELECT "
                   f"device, {epoch}, seq, t, value, mechanism, epsilon, lo, hi, {time.time()!r} FROM readings_old")
        db.execute("DROP TABLE readings_old")
    log.warning("reading store migrated: readings keyed by (device, epoch, seq), with stream and privacy unit")


class ReadingStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.secret = _consent_secret(path.parent / CONSENT_SECRET)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA secure_delete=ON")  # deleted rows are overwritten with zeros (gateway.consent)
        _migrate(self._db)
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _bump(self, name: str, by: int) -> None:
        self._db.execute(
            "INSERT INTO counters(name, value) VALUES(?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, by))

    def _conflicts(self, batch: ReadingBatch) -> list[str]:
        lo, hi = batch.readings[0].seq, batch.readings[-1].seq
        have = {seq: (t, v) for seq, t, v in self._db.execute(
            "SELECT seq, t, value FROM readings WHERE device=? AND epoch=? AND seq BETWEEN ? AND ?",
            (batch.device, batch.epoch, min(lo, hi), max(lo, hi)))}
        return [f"seq {r.seq}: stored t={have[r.seq][0]} value={have[r.seq][1]!r}, got t={r.t} value={r.value!r}"
                for r in batch.readings if r.seq in have and have[r.seq] != (r.t, r.value)]

    def add_batch(self, batch: ReadingBatch) -> tuple[int, int]:
        """Store a batch durably (one transaction); returns (new readings, duplicates dropped).

        Raises DuplicateConflict (storing nothing) if a reading's key is stored with another time or value.
        """
        p = batch.privacy
        rows = []
        for r in batch.readings:
            h = batch.header(r.stream)
            rows.append((batch.device, batch.epoch, r.seq, r.t, r.value, h.mechanism, h.epsilon, h.lo, h.hi,
                         r.stream, p.unit, p.budget, time.time()))
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if self.is_withdrawn(batch.device):  # checked in the same transaction the purge wrote its tombstone in
                self._bump("withdrawn_dropped", len(rows))
                return 0, 0
            conflicts = self._conflicts(batch)
            if conflicts:
                raise DuplicateConflict(
                    f"{batch.device} epoch {batch.epoch}: {len(conflicts)} reading(s) re-use a stored sequence "
                    f"number with other data (state reset without a new epoch, or tampering): {conflicts[0]}")
            new_epoch = self._db.execute("SELECT 1 FROM readings WHERE device=? AND epoch=? LIMIT 1",
                                         (batch.device, batch.epoch)).fetchone() is None
            before = self._db.total_changes
            self._db.executemany("INSERT OR IGNORE INTO readings (device, epoch, seq, t, value, mechanism, epsilon, "
                                 "lo, hi, stream, unit, budget, received) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            new = self._db.total_changes - before
            self._bump("duplicates", len(rows) - new)
        if new_epoch and new:
            log.info("device %s: readings of epoch %d (a new device state)", batch.device, batch.epoch)
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
        ingested = self._db.execute("SELECT COUNT(*) FROM readings").fetchone()[0]  # releases of every stream
        devices = self._db.execute("SELECT COUNT(DISTINCT device) FROM readings").fetchone()[0]
        epochs = self._db.execute("SELECT COUNT(*) FROM (SELECT DISTINCT device, epoch FROM readings)").fetchone()[0]
        rejected = self._db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
        dup = self._db.execute("SELECT value FROM counters WHERE name='duplicates'").fetchone()
        return {"ingested": ingested, "devices": devices, "rejected": rejected, "duplicates": dup[0] if dup else 0,
                "device_resets": epochs - devices}

    def governance_counts(self) -> dict[str, dict[str, int]]:
        """Withdrawals and retention, counts only (the daemon's status.json and metrics)."""
        with self._lock:
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
            withdrawn = self._db.execute("SELECT COUNT(*) FROM withdrawn").fetchone()[0]
            pending = self._db.execute("SELECT COUNT(*) FROM consent_reports WHERE sent = 0").fetchone()[0]
        return governance_doc(counters, withdrawn=withdrawn, pending=pending)

    def quarantined(self) -> list[tuple[str, str]]:
        with self._lock:
            return self._db.execute("SELECT topic, reason FROM quarantine ORDER BY id").fetchall()

    def series(self) -> dict[str, PatientSeries]:
        """Every device's (one patient's) telemetry, all epochs, each stream ordered by time.

        Glucose in mg/dL; insulin units and carbohydrate grams as released per period, at the period's end time.
        Values are the privatised estimates as stored (unbiased, noisy); a device that released no insulin or
        carbs has empty event arrays (none known).
        """
        with self._lock:
            rows = self._db.execute("SELECT device, stream, t, value FROM readings "
                                    "ORDER BY device, stream, t, epoch, seq").fetchall()
        return series_from_rows(rows)


    # -- consent withdrawal and retention (gateway.consent drives these) ------------------------------------
    def is_withdrawn(self, device: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM withdrawn WHERE pseudonym=?",
                                    (pseudonym(self.secret, device),)).fetchone() is not None

    def withdraw(self, device: str, *, issued_at: int, now: float | None = None) -> dict[str, int] | None:
        """Tombstone `device` (by pseudonym) and delete its readings and every quarantined message that names it,
        in one transaction, with a report for the cloud (counts only); then scrub the files. None if already
        withdrawn (a replay changes nothing)."""
        now = time.time() if now is None else now
        name = pseudonym(self.secret, device)
        with self._lock:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                if self._db.execute("SELECT 1 FROM withdrawn WHERE pseudonym=?", (name,)).fetchone():
                    return None
                self._db.execute("INSERT INTO withdrawn VALUES (?, ?)", (name, now))
                readings = self._db.execute("DELETE FROM readings WHERE device=?", (device,)).rowcount
                quarantined = self._db.execute(
                    "DELETE FROM quarantine WHERE instr(topic, ?) > 0 OR instr(CAST(payload AS BLOB), CAST(? AS BLOB)) "
                    "> 0", (f"/{device}/", device)).rowcount
                self._bump("withdrawal_deleted_readings", readings)
                self._bump("withdrawal_deleted_quarantine", quarantined)
                counts = {"readings": readings, "quarantined_messages": quarantined}
                self._report("withdrawal", now, subject=name, subject_kind="device", issued_at=issued_at,
                             deleted=counts, irreversible=IRREVERSIBLE)
            self._scrub()
        return counts

    def enforce_retention(self, period_s: float, *, now: float | None = None) -> dict[str, int]:
        """Delete readings and quarantined messages received more than `period_s` ago; counts (a report for the
        cloud when anything was deleted)."""
        if not period_s > 0:
            raise ValueError(f"retention period must be > 0 seconds, got {period_s}")
        now = time.time() if now is None else now
        cutoff = now - period_s
        with self._lock:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                readings = self._db.execute("DELETE FROM readings WHERE received < ?", (cutoff,)).rowcount
                quarantined = self._db.execute("DELETE FROM quarantine WHERE received < ?", (cutoff,)).rowcount
                self._bump("retention_deleted_readings", readings)
                self._bump("retention_deleted_quarantine", quarantined)
                self._bump("retention_runs", 1)
                counts = {"readings": readings, "quarantined_messages": quarantined}
                if readings or quarantined:
                    self._report("retention", now, period_days=period_s / 86400.0, deleted=counts)
            if readings or quarantined:
                self._scrub()
        return counts

    def _report(self, kind: str, now: float, **body: object) -> None:
        rid = secrets.token_hex(16)
        self._db.execute("INSERT INTO consent_reports (id, created, body) VALUES (?, ?, ?)",
                         (rid, now, json.dumps({"report_id": rid, "kind": kind, "at": now, **body}, sort_keys=True)))

    def _scrub(self, attempts: int = 50) -> None:
        """Move every page into the main file and truncate the write-ahead log, so no deleted row survives in the
        WAL (secure_delete has zeroed it in the pages). A reader's snapshot can hold the checkpoint back: retry."""
        for _ in range(attempts):
            busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy:
                return
            time.sleep(0.1)
        log.error("reading store: the write-ahead log could not be truncated after a deletion (a reader holds it); "
                  "retried on the next deletion")

    def pending_reports(self) -> list[dict]:
        with self._lock:
            return [json.loads(b) for (b,) in self._db.execute(
                "SELECT body FROM consent_reports WHERE sent = 0 ORDER BY created, id").fetchall()]

    def report_sent(self, report_id: str) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE consent_reports SET sent = 1 WHERE id = ?", (report_id,))

    def count_refused_withdrawal(self) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._bump("withdrawals_refused", 1)

    def count_dropped_after_withdrawal(self) -> None:
        """A message of a withdrawn device, dropped unread (nothing of it stored, not even in the quarantine)."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._bump("withdrawn_dropped_messages", 1)


def governance_doc(counters: dict[str, int], *, withdrawn: int, pending: int) -> dict[str, dict[str, int]]:
    """The status document's consent and retention block, from a store's counters (SQLite or a pool's PostgreSQL)."""
    return {"consent": {"withdrawn_devices": withdrawn,
                        "readings_deleted_by_withdrawal": counters.get("withdrawal_deleted_readings", 0),
                        "quarantined_deleted_by_withdrawal": counters.get("withdrawal_deleted_quarantine", 0),
                        "readings_dropped_after_withdrawal": counters.get("withdrawn_dropped", 0),
                        "messages_dropped_after_withdrawal": counters.get("withdrawn_dropped_messages", 0),
                        "withdrawals_refused": counters.get("withdrawals_refused", 0),
                        "reports_pending": pending},
            "retention": {"readings_deleted": counters.get("retention_deleted_readings", 0),
                          "quarantined_deleted": counters.get("retention_deleted_quarantine", 0),
                          "runs": counters.get("retention_runs", 0)}}


def series_from_rows(rows: list[tuple[str, str, int, float]]) -> dict[str, PatientSeries]:
    """(device, stream, t, value) rows ordered by device, stream, time -> one `PatientSeries` per device."""
    per: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for device, stream, t, v in rows:
        ts, vs = per.setdefault(device, {}).setdefault(stream, ([], []))
        ts.append(t)
        vs.append(v)

    def arrays(streams: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
        ts, vs = streams.get(name, ([], []))
        return np.asarray(ts, dtype=np.int64), np.asarray(vs, dtype=np.float64)

    out = {}
    for device, streams in per.items():
        (gt, gv), (it, iv), (ct, cv) = (arrays(streams, s) for s in (GLUCOSE, INSULIN, CARBS))
        out[device] = PatientSeries(times=gt, glucose=gv, insulin_times=it, insulin_units=iv, carb_times=ct,
                                    carb_grams=cv)
    return out
