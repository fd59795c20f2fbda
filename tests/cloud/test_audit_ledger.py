"""The audit ledger on a real database (SQLite and PostgreSQL): every tamper kind is caught and named.

Each test builds a ledger through the real HTTP API, changes rows with SQL the way an attacker with
database access would, and checks that `verify_ledger` (and `wearfed audit verify`) names the first bad entry.
"""

from __future__ import annotations

import base64
import contextlib
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, insert, select, update

from cloud.audit import ORIGIN, LedgerTampered, StateTampered, entry_bytes, verify_ledger
from cloud.record_db import CheckpointRow, Event
from federation.checkpoint import Checkpoint, sign_checkpoint
from federation.merkle import MerkleLog, leaf_hash, verify_inclusion
from tests.cloud.participants import create_user, issue_token


@pytest.fixture
def ledger(cloud):  # noqa: ANN001, ANN201
    """A ledger of a few dozen entries written through the API; returns the cloud's store."""
    with httpx.Client(base_url=cloud.url, timeout=30) as http:
        for i in range(6):
            issue_token(http, f"gw-{i}")
            auditor = create_user(http, f"user-{i}", "auditor")
            http.get("/v1/users", headers=auditor)  # a known user denied: audited
    fed = cloud.units.store
    verify_ledger(fed.sessions)  # intact
    return fed


@contextlib.contextmanager
def tampered(fed, *statements) -> Iterator[None]:  # noqa: ANN001
    """Apply SQL statements, yield, then restore the ledger exactly."""
    with fed.sessions() as s:
        events = [dict(r._mapping) for r in s.execute(select(Event.__table__))]
        cps = [dict(r._mapping) for r in s.execute(select(CheckpointRow.__table__))]
    with fed.sessions.begin() as s:
        for st in statements:
            s.execute(st)
    try:
        yield
    finally:
        with fed.sessions.begin() as s:
            s.execute(delete(Event.__table__))
            s.execute(delete(CheckpointRow.__table__))
            s.execute(insert(Event.__table__), events)
            s.execute(insert(CheckpointRow.__table__), cps)
        verify_ledger(fed.sessions)


def named(fed) -> tuple[int | None, str]:  # noqa: ANN001
    with pytest.raises(LedgerTampered) as info:
        verify_ledger(fed.sessions)
    return info.value.seq, str(info.value)


def size(fed) -> int:  # noqa: ANN001
    with fed.sessions() as s:
        return len(s.scalars(select(Event.seq)).all())


def test_every_single_row_alteration_is_named(ledger) -> None:  # noqa: ANN001
    n = size(ledger)
    assert n > 20
    for seq in range(n):
        with tampered(ledger, update(Event).where(Event.seq == seq).values(actor="mallory")):
            got, msg = named(ledger)
            assert got == seq, msg
            assert f"entry {seq}" in msg


def test_altered_detail_time_and_kind_are_named(ledger) -> None:  # noqa: ANN001
    for values in ({"detail": {"name": "user-9", "role": "admin"}}, {"at": "2020-01-01T00:00:00+00:00"},
                   {"kind": "user.deleted"}):
        with tampered(ledger, update(Event).where(Event.seq == 7).values(**values)):
            assert named(ledger)[0] == 7


def test_deleted_rows_are_named(ledger) -> None:  # noqa: ANN001
    n = size(ledger)
    with tampered(ledger, delete(Event).where(Event.seq == 5)):
        seq, msg = named(ledger)
        assert seq == 5 and "deleted" in msg
    with tampered(ledger, delete(Event).where(Event.seq == n - 1)):  # the newest entry
        seq, msg = named(ledger)
        assert seq == n - 1 and "deleted" in msg


def test_reordered_rows_are_named(ledger) -> None:  # noqa: ANN001
    with ledger.sessions() as s:
        a, b = (s.scalars(select(Event).where(Event.seq == k)).one() for k in (9, 10))
        swap_a = {"at": b.at, "kind": b.kind, "actor": b.actor, "detail": b.detail, "state_rows": b.state_rows}
        swap_b = {"at": a.at, "kind": a.kind, "actor": a.actor, "detail": a.detail, "state_rows": a.state_rows}
    with tampered(ledger, update(Event).where(Event.seq == 9).values(**swap_a),
                  update(Event).where(Event.seq == 10).values(**swap_b)):
        assert named(ledger)[0] == 9
    # swapping only the sequence numbers (row order) is the same reordering
    with tampered(ledger, update(Event).where(Event.seq == 9).values(seq=-1),
                  update(Event).where(Event.seq == 10).values(seq=9),
                  update(Event).where(Event.seq == -1).values(seq=10)):
        assert named(ledger)[0] == 9


def test_inserted_rows_are_named(ledger) -> None:  # noqa: ANN001
    n = size(ledger)
    forged = {"seq": n, "at": "2026-01-01T00:00:00+00:00", "kind": "model.promoted", "actor": "mallory",
              "detail": {"version": 99}}
    with tampered(ledger, insert(Event.__table__).values(**forged)):
        seq, msg = named(ledger)
        assert seq == n and "no signed checkpoint" in msg
    # inserted in the middle: later rows renumbered to make room
    shift = [update(Event).where(Event.seq == k).values(seq=k + 1) for k in range(n - 1, 11, -1)]
    with tampered(ledger, *shift, insert(Event.__table__).values(**{**forged, "seq": 12})):
        assert named(ledger)[0] == 12


def test_checkpoint_forgery_is_caught(ledger) -> None:  # noqa: ANN001
    n = size(ledger)
    with ledger.sessions() as s:
        events = s.scalars(select(Event).order_by(Event.seq)).all()
    # an attacker alters entry 3 and re-signs every later checkpoint with a key of their own
    mallory = Ed25519PrivateKey.generate()
    log = MerkleLog()
    stmts = [update(Event).where(Event.seq == 3).values(actor="mallory")]
    for e in events:
        log.append(entry_bytes(seq=e.seq, at=e.at, kind=e.kind, actor="mallory" if e.seq == 3 else e.actor,
                               detail=e.detail, rows=e.state_rows))
        if e.seq >= 3:
            cp = Checkpoint(origin=ORIGIN, tree_size=e.seq + 1, root_hash=log.root())
            stmts.append(update(CheckpointRow).where(CheckpointRow.tree_size == e.seq + 1).values(
                body=cp.body().decode(), signature=base64.b64encode(sign_checkpoint(cp, mallory)).decode()))
    with tampered(ledger, *stmts):
        seq, msg = named(ledger)
        assert seq == 3 and "not validly signed" in msg
    with tampered(ledger, update(CheckpointRow).where(CheckpointRow.tree_size == n).values(
            signature=base64.b64encode(b"\0" * 64).decode())):
        assert named(ledger)[0] == n - 1
    with tampered(ledger, delete(CheckpointRow).where(CheckpointRow.tree_size == 4)):
        assert named(ledger)[0] == 3


def test_pinned_key_rejects_a_database_whose_key_was_swapped(ledger) -> None:  # noqa: ANN001
    other = base64.b64encode(bytes(32)).decode()
    with pytest.raises(LedgerTampered):
        verify_ledger(ledger.sessions, public_key=other)
    report = verify_ledger(ledger.sessions, public_key=ledger.audit.public_key_b64)
    assert report.warnings == [] and report.entries == size(ledger)


def test_inclusion_proof_from_the_api_verifies(cloud, ledger) -> None:  # noqa: ANN001
    with httpx.Client(base_url=cloud.url, timeout=30) as http:
        h = create_user(http, "aud", "auditor")
        entries = http.get("/v1/audit/entries", headers=h).json()
        proof = http.get("/v1/audit/proof/4", headers=h).json()
    e = entries[4]
    verify_inclusion(leaf_hash=leaf_hash(entry_bytes(seq=4, at=e["at"], kind=e["kind"], actor=e["actor"],
                                                     detail=e["detail"], rows=e["rows"])),
                     index=4, tree_size=proof["tree_size"], proof=[bytes.fromhex(p) for p in proof["proof"]],
                     root=bytes.fromhex(proof["root"]))


def test_cli_verify_exits_non_zero_naming_the_entry(cloud, ledger) -> None:  # noqa: ANN001
    cmd = [sys.executable, "-m", "federation.cli", "audit", "verify", "--db", cloud.db_url]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("warning") and "OK:" in ok.stdout, ok.stdout + ok.stderr
    with tampered(ledger, update(Event).where(Event.seq == 6).values(detail={"forged": True})):
        bad = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "FAIL: entry 6" in bad.stdout, bad.stdout + bad.stderr


def test_truncation_is_caught_against_a_saved_checkpoint(cloud, ledger, tmp_path) -> None:  # noqa: ANN001
    import json

    from cloud.audit import verify_witness

    saved = cloud.units.ledgers.latest_checkpoint().model_dump()
    n = saved["tree_size"]
    verify_witness(ledger.sessions, saved)
    # the newest two entries and their checkpoints removed: the log alone is self-consistent (the rows those
    # entries committed are now unlogged, which the state check names) ...
    with tampered(ledger, delete(Event).where(Event.seq >= n - 2),
                  delete(CheckpointRow).where(CheckpointRow.tree_size >= n - 1)):
        verify_ledger(ledger.sessions, state=False)
        with pytest.raises(StateTampered, match="not in the log|the log says"):  # unlogged rows, or later values
            verify_ledger(ledger.sessions)
        with pytest.raises(LedgerTampered, match="deleted") as info:  # ... but not against the saved checkpoint
            verify_witness(ledger.sessions, saved)
        assert info.value.seq == n - 2
        (tmp_path / "cp.json").write_text(json.dumps(saved))
        cli = subprocess.run([sys.executable, "-m", "federation.cli", "audit", "verify", "--db", cloud.db_url,
                              "--checkpoint", str(tmp_path / "cp.json")], capture_output=True, text=True, timeout=120)
        assert cli.returncode == 1 and f"entry {n - 2}" in cli.stdout
    forged = {**saved, "signature": base64.b64encode(bytes(64)).decode()}
    with pytest.raises(LedgerTampered, match="saved checkpoint does not verify"):
        verify_witness(ledger.sessions, forged)
