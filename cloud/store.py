"""The cloud's state handle: database sessions, the audit ledger's single writer, and the one audited-transaction
helper every unit uses.

Every write runs inside `Store.tx()`, which holds the writer lock, so the ledger has one writer (`cloud.audit`). On
PostgreSQL the lock spans processes: several `wearfed cloud serve` replicas may share one database, and every write
transaction first takes a transaction-level advisory lock (`cloud.pg_locks`), so state transitions and ledger appends
are serialised across replicas exactly as threads are inside one; a replica killed mid-transaction loses its
connection and PostgreSQL rolls the transaction back and frees the lock. `Store.claim` gives one process at a time a
piece of background work (a round to aggregate); SQLite serves one process, so there it is a process-local lock.

Every row a transaction inserts, changes or deletes in a state table is committed in the log (`cloud.state_binding`):
`Store.append` puts the rows changed since the previous entry into the entry it appends, and the commit puts any
left into a ``state.changed`` entry, in the same transaction.

`Store.refusals(...)` wraps an action so that a refusal (any `CloudError`) is itself audited before it propagates:
a denial (403) as ``access.denied``, anything else under the action's rejection kind; unauthenticated or malformed
requests (401, 413, 422, 429) write no row of their own: `cloud.ratelimit` counts them into one ``access.failures``
entry per window, so a flood of anonymous requests cannot grow the log.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cloud import pg_locks, state_binding
from cloud.audit import LOG_KEY_SETTING, AuditLog, LedgerTampered
from cloud.errors import CloudError
from cloud.failure_tally import SUMMARISED  # not the middleware: the tally alone, which imports nothing of the cloud
from cloud.record_db import Event, Setting


def aware(ts: datetime) -> datetime:
    """A database timestamp as an aware UTC datetime (SQLite drops the zone)."""
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


class Store:
    def __init__(self, sessions: sessionmaker, audit: AuditLog) -> None:
        self.sessions = sessions
        self.audit = audit
        self._writer = threading.RLock()
        self._local = threading.local()  # this thread's transaction depth and exclusive section
        self._claims: dict[tuple[int, int], threading.Lock] = {}  # SQLite: process-local claims
        self._claims_guard = threading.Lock()
        self.shared = pg_locks.is_postgres(sessions)  # replicas may share this database
        state_binding.install(sessions)
        self._bind_state()
        self._pin_key()

    def read(self) -> Session:
        """A session for reads (use as a context manager)."""
        return self.sessions()

    @contextlib.contextmanager
    def tx(self) -> Iterator[Session]:
        """A write transaction holding the writer lock (the audit ledger has one writer)."""
        with self._writer, self.sessions.begin() as s:
            depth = getattr(self._local, "depth", 0)
            if self.shared and depth == 0 and not getattr(self._local, "exclusive", False):
                pg_locks.lock_writer(s)  # every replica's writes, one at a time (freed at commit or rollback)
            self._local.depth = depth + 1
            try:
                state_binding.mark_bound(s)
                yield s
                rows = state_binding.drain(s)
                if rows:  # changed after the transaction's last entry (or in one that appends none)
                    self.audit.append(s, state_binding.CHANGED_KIND, "cloud", {}, rows=rows)
            finally:
                self._local.depth = depth

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the writer lock across several transactions (a state machine step that reads, then writes); on
        PostgreSQL a session-level advisory lock on a connection of its own keeps other replicas out meanwhile."""
        with self._writer:
            if not self.shared or getattr(self._local, "exclusive", False):
                yield
                return
            with pg_locks.session_lock(self.sessions, pg_locks.WRITER):
                self._local.exclusive = True
                try:
                    yield
                finally:
                    self._local.exclusive = False

    @contextlib.contextmanager
    def claim(self, namespace: int, key: int) -> Iterator[bool]:
        """Try to take a piece of work (e.g. `pg_locks.AGGREGATION`, round id) for this process; yields whether it
        was taken. On PostgreSQL the claim is a session-level advisory lock, freed when the block ends or the
        process dies (its connection closes), so a killed replica's work is taken over by another."""
        if self.shared:
            with pg_locks.try_session_lock(self.sessions, (namespace, key)) as taken:
                yield taken
            return
        with self._claims_guard:
            lock = self._claims.setdefault((namespace, key), threading.Lock())
        taken = lock.acquire(blocking=False)
        try:
            yield taken
        finally:
            if taken:
                lock.release()

    def append(self, s: Session, kind: str, actor: str, /, **detail: object) -> None:
        """One audit entry inside the caller's transaction, carrying the rows it changed since the last entry."""
        self.audit.append(s, kind, actor, detail, rows=state_binding.drain(s))

    def _bind_state(self) -> None:
        """Open the binding on a database's first start: a ``state.binding`` entry, with a snapshot of any rows a
        database from an older version already holds (trusted on upgrade; said in the entry)."""
        with self.tx() as s:
            if s.scalar(select(Event.id).where(Event.kind == state_binding.BINDING_KIND).limit(1)) is not None:
                return
            rows = state_binding.snapshot(s)
            parts = list(state_binding.chunks(rows)) or [[]]
            self.audit.append(s, state_binding.BINDING_KIND, "cloud",
                              {"version": state_binding.BINDING_VERSION, "snapshot_rows": len(rows),
                               "snapshot_entries": len(parts),
                               "note": "rows present before binding are trusted as found" if rows else "empty"},
                              rows=parts[0])
            for i, part in enumerate(parts[1:], start=1):
                self.audit.append(s, state_binding.SNAPSHOT_KIND, "cloud", {"part": i}, rows=part)

    def _pin_key(self) -> None:
        """Record the log's public key on first start (an audited setting); refuse a different key later."""
        with self.tx() as s:
            row = s.get(Setting, LOG_KEY_SETTING)
            if row is None:
                s.add(Setting(key=LOG_KEY_SETTING, value=self.audit.public_key_b64))
                self.append(s, "audit.key_pinned", "cloud", public_key=self.audit.public_key_b64)
            elif row.value != self.audit.public_key_b64:
                raise LedgerTampered(f"this database's audit log is signed by key {row.value}, not by this "
                                     f"cloud's log key {self.audit.public_key_b64}", seq=None)

    def record(self, kind: str, actor: str, /, **detail: object) -> None:
        """One audit entry in a transaction of its own."""
        with self.tx() as s:
            self.append(s, kind, actor, **detail)

    @contextlib.contextmanager
    def refusals(self, kind: str, actor: str, /, *, session: Session | None = None,
                 **detail: object) -> Iterator[None]:
        """Audit a refusal raised inside the block (denials as ``access.denied``, others as `kind`), then re-raise; in
        a transaction of its own, or in `session`'s (a batch whose other items go on)."""
        try:
            yield
        except CloudError as exc:
            if exc.status not in SUMMARISED:  # those are counted per window by cloud.failure_tally
                entry = ("access.denied" if exc.status == 403 else kind, actor)
                if session is None:
                    self.record(*entry, status=exc.status, reason=exc.reason, **detail)
                else:
                    self.append(session, *entry, status=exc.status, reason=exc.reason, **detail)
            raise

    @staticmethod
    def set_setting(s: Session, key: str, value: str) -> None:
        row = s.get(Setting, key)
        if row is None:
            s.add(Setting(key=key, value=value))
        else:
            row.value = value

    @staticmethod
    def setting(s: Session, key: str) -> str | None:
        row = s.get(Setting, key)
        return None if row is None else row.value
