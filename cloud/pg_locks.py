"""PostgreSQL advisory locks that let several cloud replicas share one database (docs/scale.md).

Advisory locks are scoped to one database and keyed by two 32-bit integers (PostgreSQL manual, "Advisory Locks",
section 13.3.5, and the functions in 9.28.10): ``pg_advisory_xact_lock`` is freed at commit or rollback,
``pg_advisory_lock`` / ``pg_try_advisory_lock`` when unlocked or when their connection closes, which is what makes
a SIGKILLed replica's locks go away without anyone cleaning up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

NAMESPACE = 0x5746  # "WF": the first key of every wearfed lock
WRITER = (NAMESPACE, 1)  # every write transaction (the audit ledger's single writer)
SCHEMA = (NAMESPACE, 2)  # creating or migrating tables at start
AGGREGATION = 0x5747  # namespace of per-round aggregation claims: (AGGREGATION, round id)


def is_postgres(sessions: sessionmaker) -> bool:
    bind = sessions.kw.get("bind")
    return bind is not None and bind.dialect.name == "postgresql"


def lock_writer(s: Session) -> None:
    """Take the writer lock for the session's transaction (blocks until no other replica writes)."""
    s.execute(text("SELECT pg_advisory_xact_lock(:a, :b)"), {"a": WRITER[0], "b": WRITER[1]})


@contextlib.contextmanager
def session_lock(sessions: sessionmaker, key: tuple[int, int]) -> Iterator[None]:
    """Hold a session-level lock on a connection of its own for the block (blocking)."""
    with sessions.kw["bind"].connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:a, :b)"), {"a": key[0], "b": key[1]})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:a, :b)"), {"a": key[0], "b": key[1]})
            conn.commit()


@contextlib.contextmanager
def try_session_lock(sessions: sessionmaker, key: tuple[int, int]) -> Iterator[bool]:
    """Try a session-level lock on a connection of its own; yields whether it was taken, holds it for the block."""
    with sessions.kw["bind"].connect() as conn:
        taken = bool(conn.execute(text("SELECT pg_try_advisory_lock(:a, :b)"), {"a": key[0], "b": key[1]}).scalar())
        conn.commit()
        try:
            yield taken
        finally:
            if taken:
                conn.execute(text("SELECT pg_advisory_unlock(:a, :b)"), {"a": key[0], "b": key[1]})
                conn.commit()


@contextlib.contextmanager
def schema_lock(engine: Engine) -> Iterator[None]:
    """Serialise table creation among replicas starting at once (a no-op on other databases)."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:a, :b)"), {"a": SCHEMA[0], "b": SCHEMA[1]})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:a, :b)"), {"a": SCHEMA[0], "b": SCHEMA[1]})
            conn.commit()
