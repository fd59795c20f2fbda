"""The cloud database's engine: a SQLite file by default (WAL, full sync, foreign keys), PostgreSQL by URL
(WEARFED_DB_URL); every table on `cloud.db.Base` created once (under a lock, for replicas starting at once) and the
columns and indexes added since older versions migrated in."""

from __future__ import annotations

from sqlalchemy import JSON, String, create_engine, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from cloud import record_db  # noqa: F401 - its tables are on Base: created with the others
from cloud.db import Base


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record) -> None:  # noqa: ANN001
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    else:
        engine = create_engine(url, pool_pre_ping=True)
    from cloud.pg_locks import schema_lock  # replicas starting at once create the tables once

    with schema_lock(engine):
        Base.metadata.create_all(engine)
        _add_missing_columns(engine)
        _add_missing_indexes(engine)
    return engine


def _add_missing_columns(engine: Engine) -> None:
    """Additive migration of a database made by an older version: nullable columns added since (``events.state_rows``,
    the state binding; ``updates.region``, hierarchical aggregation); `create_all` creates missing tables but never
    columns."""
    for table, column, kind in (("events", "state_rows", JSON()), ("updates", "region", String(64))):
        if column not in {c["name"] for c in inspect(engine).get_columns(table)}:
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} " + kind.compile(dialect=engine.dialect)))


def _add_missing_indexes(engine: Engine) -> None:
    """Indexes declared on `Base` since a database was made: `create_all` makes them only with a new table. Without
    ``ix_updates_ciphertext_sha256`` every submission's identical-ciphertext check read every stored ciphertext."""
    existing = inspect(engine)
    for table in Base.metadata.sorted_tables:
        present = {i["name"] for i in existing.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in present:
                index.create(engine)


def make_sessionmaker(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
