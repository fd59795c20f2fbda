"""The on-disk store-and-forward queue: durable sequence numbers, bounded with drop-oldest, ack by seq."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from device.errors import SpoolError
from device.spool import Spool


def test_sequence_numbers_and_unacked_readings_survive_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite")
    q = spool.device("d1", capacity=10)
    seqs = [q.append(1000 + 300 * i, 100.0 + i, next_t=1300 + 300 * i) for i in range(5)]
    assert seqs == [0, 1, 2, 3, 4]
    q.ack([0, 1])
    other = spool.device("d2", capacity=10)
    assert other.append(5, 1.0, next_t=6) == 0  # per-device numbering
    spool.close()
    q2 = Spool(tmp_path / "s.sqlite").device("d1", capacity=10)
    assert [r.seq for r in q2.peek(10)] == [2, 3, 4] and len(q2) == 3
    assert q2.state.next_t == 1300 + 300 * 4
    assert q2.append(9999, 1.0, next_t=10_299) == 5  # resumes, never reuses a number


def test_full_buffer_drops_oldest_and_counts(tmp_path: Path) -> None:
    q = Spool(tmp_path / "s.sqlite").device("d1", capacity=3)
    for i in range(8):
        q.append(i + 1, float(i), next_t=i + 2)
    assert [r.seq for r in q.peek(10)] == [5, 6, 7]
    assert q.state.dropped == 5 and len(q) == 3
    q.ack([5, 6, 7, 42])  # unknown seqs are ignored
    assert len(q) == 0


def test_inconsistent_spool_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    q = Spool(path).device("d1", capacity=3)
    q.append(1, 1.0, next_t=2)
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET next_seq=0")  # a tampered counter would reuse sequence numbers
    db.commit()
    with pytest.raises(SpoolError, match="inconsistent"):
        Spool(path).device("d1", capacity=3)
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(SpoolError):
        Spool(tmp_path / "junk.sqlite")
