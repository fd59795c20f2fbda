"""The cloud database's engine: indexes declared since a database was made are added at start, and the duplicate-
ciphertext check every submission makes reads an index, not every stored ciphertext."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from cloud.engine import make_engine

INDEX = "ix_updates_ciphertext_sha256"


def _indexes(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


def test_an_older_database_gets_the_ciphertext_index_at_start(tmp_path: Path) -> None:
    db = tmp_path / "cloud.db"
    make_engine(f"sqlite:///{db}").dispose()
    with sqlite3.connect(db) as conn:  # as a database made before the index was declared
        conn.execute(f"DROP INDEX {INDEX}")
    assert INDEX not in _indexes(db)
    make_engine(f"sqlite:///{db}").dispose()
    assert INDEX in _indexes(db)
    make_engine(f"sqlite:///{db}").dispose()  # a second start changes nothing


def test_the_duplicate_ciphertext_lookup_searches_the_index(tmp_path: Path) -> None:
    db = tmp_path / "cloud.db"
    make_engine(f"sqlite:///{db}").dispose()
    with sqlite3.connect(db) as conn:
        plan = " ".join(str(row[-1]) for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM updates WHERE ciphertext_sha256 = ? LIMIT 1", ("0" * 64,)))
    assert f"USING INDEX {INDEX}" in plan or f"USING COVERING INDEX {INDEX}" in plan, plan
