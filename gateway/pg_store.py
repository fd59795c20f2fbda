"""A reading store on PostgreSQL, shared by the members of a gateway pool (docs/scale.md, "Gateway pools").

Same contract as `gateway.store.ReadingStore` (SQLite): one row per (device, epoch, seq), every batch one committed
transaction before the ingest acknowledges it, redelivered readings counted as duplicates, a reused key with other
data a `DuplicateConflict` that stores nothing. What the pool adds is concurrency: the broker hands consecutive
batches of one device to different members, so each batch first takes a transaction-level advisory lock on its
device (`pg_advisory_xact_lock(ns, hashtext(device))`, PostgreSQL manual 9.28.10) and the conflict check and the
insert of one device never interleave. Per-device order is the device's own sequence number, not arrival order:
`series()` reads by (device, stream, t, epoch, seq), whichever member stored what when.

Consent and retention as in the SQLite store (`gateway.consent`): a withdrawal tombstones the device by pseudonym
(HMAC under the pool's key, kept in the database so every member computes the same name) and deletes its readings
and quarantined messages in one transaction under the device's lock, so no member's batch lands after it; the
tables are then rewritten (`VACUUM FULL`, PostgreSQL manual 24.1.2) so no deleted row stays in their files. Counts
are queued for the cloud in ``consent_reports``; the member that runs a node sends them (docs/scale.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection

from federation.consent import IRREVERSIBLE, pseudonym
from federation.errors import ConfigError
from federation.series import PatientSeries
from federation.telemetry import ReadingBatch
from gateway.store import DuplicateConflict, governance_doc, series_from_rows

log = logging.getLogger(__name__)
DEVICE_LOCKS = 0x5748  # advisory-lock namespace of per-device locks (cloud.pg_locks uses 0x5746, 0x5747)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS readings (
        device TEXT NOT NULL, epoch BIGINT NOT NULL, seq BIGINT NOT NULL, t BIGINT NOT NULL,
        value DOUBLE PRECISION NOT NULL, mechanism TEXT NOT NULL, epsilon DOUBLE PRECISION,
        lo DOUBLE PRECISION NOT NULL, hi DOUBLE PRECISION NOT NULL, stream TEXT NOT NULL DEFAULT 'glucose',
        unit TEXT NOT NULL DEFAULT 'reading', budget DOUBLE PRECISION, stored_by TEXT,
        PRIMARY KEY (device, epoch, seq))""",
    "ALTER TABLE readings ADD COLUMN IF NOT EXISTS received DOUBLE PRECISION",  # retention counts from here
    "CREATE INDEX IF NOT EXISTS readings_time ON readings (t)",
    """CREATE TABLE IF NOT EXISTS quarantine (
        id BIGSERIAL PRIMARY KEY, received DOUBLE PRECISION NOT NULL, topic TEXT NOT NULL, reason TEXT NOT NULL,
        payload BYTEA, digest TEXT UNIQUE)""",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS withdrawn (pseudonym TEXT PRIMARY KEY, at DOUBLE PRECISION NOT NULL)",
    """CREATE TABLE IF NOT EXISTS consent_reports (id TEXT PRIMARY KEY, created DOUBLE PRECISION NOT NULL,
        body TEXT NOT NULL, sent BOOLEAN NOT NULL DEFAULT FALSE)""",
    "CREATE TABLE IF NOT EXISTS pool_secret (id INT PRIMARY KEY CHECK (id = 1), secret BYTEA NOT NULL)",
)
SCRUBBED = ("readings", "quarantine")  # rewritten after a deletion


class PgReadingStore:
    """`ReadingStore`'s interface on a PostgreSQL database that several ingest processes share."""

    def __init__(self, url: str, *, member: str = "") -> None:
        if not url.startswith("postgresql"):
            raise ConfigError(f"--store-url {url!r}: a gateway pool shares a PostgreSQL store "
                              "(postgresql+psycopg2://user@host/db)")
        self.member = member
        self._engine = create_engine(url, pool_pre_ping=True, pool_size=2)
        with self._engine.begin() as c:
            c.execute(text("SELECT pg_advisory_xact_lock(:a, 0)"), {"a": DEVICE_LOCKS})  # members start at once
            for stmt in SCHEMA:
                c.execute(text(stmt))
            c.execute(text("INSERT INTO pool_secret VALUES (1, :s) ON CONFLICT DO NOTHING"),
                      {"s": secrets.token_bytes(32)})
            self.secret = bytes(c.execute(text("SELECT secret FROM pool_secret")).scalar_one())

    def close(self) -> None:
        self._engine.dispose()

    @staticmethod
    def _lock_device(c: Connection, device: str) -> None:
        c.execute(text("SELECT pg_advisory_xact_lock(:a, hashtext(:d))"), {"a": DEVICE_LOCKS, "d": device})

    def add_batch(self, batch: ReadingBatch) -> tuple[int, int]:
        """Store a batch durably (one transaction); returns (new readings, duplicates dropped)."""
        p = batch.privacy
        rows = [{"device": batch.device, "epoch": batch.epoch, "seq": r.seq, "t": r.t, "value": r.value,
                 "mechanism": batch.header(r.stream).mechanism, "epsilon": batch.header(r.stream).epsilon,
                 "lo": batch.header(r.stream).lo, "hi": batch.header(r.stream).hi, "stream": r.stream,
                 "unit": p.unit, "budget": p.budget, "by": self.member, "received": time.time()}
                for r in batch.readings]
        seqs = [r.seq for r in batch.readings]
        with self._engine.begin() as c:
            self._lock_device(c, batch.device)
            if self._withdrawn(c, batch.device):  # checked under the lock the purge took
                _bump(c, "withdrawn_dropped", len(rows))
                return 0, 0
            have = {seq: (t, v) for seq, t, v in c.execute(text(
                "SELECT seq, t, value FROM readings WHERE device=:d AND epoch=:e AND seq BETWEEN :lo AND :hi"),
                {"d": batch.device, "e": batch.epoch, "lo": min(seqs), "hi": max(seqs)})}
            conflicts = [f"seq {r.seq}: stored t={have[r.seq][0]} value={have[r.seq][1]!r}, got t={r.t} "
                         f"value={r.value!r}" for r in batch.readings
                         if r.seq in have and have[r.seq] != (r.t, r.value)]
            if conflicts:
                raise DuplicateConflict(
                    f"{batch.device} epoch {batch.epoch}: {len(conflicts)} reading(s) re-use a stored sequence "
                    f"number with other data (state reset without a new epoch, or tampering): {conflicts[0]}")
            new = 0
            for row in rows:
                new += c.execute(text(
                    "INSERT INTO readings (device, epoch, seq, t, value, mechanism, epsilon, lo, hi, stream, unit, "
                    "budget, stored_by, received) VALUES (:device, :epoch, :seq, :t, :value, :mechanism, :epsilon, "
                    ":lo, :hi, :stream, :unit, :budget, :by, :received) ON CONFLICT DO NOTHING"), row).rowcount
            if len(rows) - new:
                _bump(c, "duplicates", len(rows) - new)
        return new, len(rows) - new

    def quarantine(self, topic: str, payload: bytes, reason: str) -> None:
        digest = hashlib.sha256(topic.encode() + b"\x00" + payload).hexdigest()
        with self._engine.begin() as c:
            c.execute(text("INSERT INTO quarantine(received, topic, reason, payload, digest) VALUES "
                           "(:r, :t, :why, :p, :d) ON CONFLICT (digest) DO NOTHING"),
                      {"r": time.time(), "t": topic, "why": reason[:500], "p": payload[:65536], "d": digest})

    def counts(self) -> dict[str, int]:
        with self._engine.connect() as c:
            ingested, devices, epochs = c.execute(text(
                "SELECT COUNT(*), COUNT(DISTINCT device), COUNT(DISTINCT (device, epoch)) FROM readings")).one()
            rejected = c.execute(text("SELECT COUNT(*) FROM quarantine")).scalar()
            dup = c.execute(text("SELECT value FROM counters WHERE name='duplicates'")).scalar()
        return {"ingested": ingested, "devices": devices, "rejected": rejected, "duplicates": dup or 0,
                "device_resets": epochs - devices}

    def quarantined(self) -> list[tuple[str, str]]:
        with self._engine.connect() as c:
            return [tuple(r) for r in c.execute(text("SELECT topic, reason FROM quarantine ORDER BY id"))]

    def series(self) -> dict[str, PatientSeries]:
        """Every device's telemetry, all epochs, each stream ordered by time (as `ReadingStore.series`)."""
        with self._engine.connect() as c:
            rows = [tuple(r) for r in c.execute(text(
                "SELECT device, stream, t, value FROM readings ORDER BY device, stream, t, epoch, seq"))]
        return series_from_rows(rows)

    # -- consent withdrawal and retention (gateway.consent drives these, as on the SQLite store) ----------------
    def _withdrawn(self, c: Connection, device: str) -> bool:
        return c.execute(text("SELECT 1 FROM withdrawn WHERE pseudonym=:p"),
                         {"p": pseudonym(self.secret, device)}).first() is not None

    def is_withdrawn(self, device: str) -> bool:
        with self._engine.connect() as c:
            return self._withdrawn(c, device)

    def withdraw(self, device: str, *, issued_at: int, now: float | None = None) -> dict[str, int] | None:
        """Tombstone `device` and delete its readings and every quarantined message naming it (one transaction under
        the device's lock); then rewrite the tables. None if already withdrawn."""
        now = time.time() if now is None else now
        name = pseudonym(self.secret, device)
        with self._engine.begin() as c:
            self._lock_device(c, device)
            if c.execute(text("INSERT INTO withdrawn VALUES (:p, :at) ON CONFLICT DO NOTHING"),
                         {"p": name, "at": now}).rowcount == 0:
                return None
            readings = c.execute(text("DELETE FROM readings WHERE device=:d"), {"d": device}).rowcount
            quarantined = c.execute(text(
                "DELETE FROM quarantine WHERE strpos(topic, :t) > 0 "
                "OR position(convert_to(:d, 'UTF8') IN payload) > 0"),
                {"t": f"/{device}/", "d": device}).rowcount
            _bump(c, "withdrawal_deleted_readings", readings)
            _bump(c, "withdrawal_deleted_quarantine", quarantined)
            counts = {"readings": readings, "quarantined_messages": quarantined}
            _report(c, "withdrawal", now, subject=name, subject_kind="device", issued_at=issued_at, deleted=counts,
                    irreversible=IRREVERSIBLE)
        self._scrub()
        return counts

    def enforce_retention(self, period_s: float, *, now: float | None = None) -> dict[str, int]:
        """Delete readings and quarantined messages received more than `period_s` ago; counts."""
        if not period_s > 0:
            raise ValueError(f"retention period must be > 0 seconds, got {period_s}")
        now = time.time() if now is None else now
        cutoff = {"c": now - period_s}
        with self._engine.begin() as c:
            readings = c.execute(text("DELETE FROM readings WHERE received < :c"), cutoff).rowcount
            quarantined = c.execute(text("DELETE FROM quarantine WHERE received < :c"), cutoff).rowcount
            _bump(c, "retention_deleted_readings", readings)
            _bump(c, "retention_deleted_quarantine", quarantined)
            _bump(c, "retention_runs", 1)
            counts = {"readings": readings, "quarantined_messages": quarantined}
            if readings or quarantined:
                _report(c, "retention", now, period_days=period_s / 86400.0, deleted=counts)
        if readings or quarantined:
            self._scrub()
        return counts

    def _scrub(self) -> None:
        """Rewrite the tables without the deleted rows (VACUUM cannot run in a transaction: autocommit)."""
        with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            for table in SCRUBBED:
                c.execute(text(f"VACUUM FULL {table}"))

    def pending_reports(self) -> list[dict]:
        with self._engine.connect() as c:
            return [json.loads(b) for (b,) in c.execute(text(
                "SELECT body FROM consent_reports WHERE NOT sent ORDER BY created, id"))]

    def report_sent(self, report_id: str) -> None:
        with self._engine.begin() as c:
            c.execute(text("UPDATE consent_reports SET sent = TRUE WHERE id = :i"), {"i": report_id})

    def count_refused_withdrawal(self) -> None:
        with self._engine.begin() as c:
            _bump(c, "withdrawals_refused", 1)

    def count_dropped_after_withdrawal(self) -> None:
        with self._engine.begin() as c:
            _bump(c, "withdrawn_dropped_messages", 1)

    def governance_counts(self) -> dict[str, dict[str, int]]:
        """Withdrawals and retention, counts only (as `ReadingStore.governance_counts`)."""
        with self._engine.connect() as c:
            counters = dict(c.execute(text("SELECT name, value FROM counters")).all())
            withdrawn = c.execute(text("SELECT COUNT(*) FROM withdrawn")).scalar_one()
            pending = c.execute(text("SELECT COUNT(*) FROM consent_reports WHERE NOT sent")).scalar_one()
        return governance_doc(counters, withdrawn=withdrawn, pending=pending)


def _bump(c: Connection, name: str, by: int) -> None:
    if by:
        c.execute(text("INSERT INTO counters(name, value) VALUES(:n, :by) ON CONFLICT (name) DO "
                       "UPDATE SET value = counters.value + excluded.value"), {"n": name, "by": by})


def _report(c: Connection, kind: str, now: float, **body: object) -> None:
    rid = secrets.token_hex(16)
    body = {"report_id": rid, "kind": kind, "at": now, **body}
    c.execute(text("INSERT INTO consent_reports (id, created, body) VALUES (:i, :c, :b)"),
              {"i": rid, "c": now, "b": json.dumps(body, sort_keys=True)})
