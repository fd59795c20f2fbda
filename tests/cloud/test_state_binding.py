"""Defect 9 (issue 14): state rows changed behind the audit log's back.

A demo-like database is built through the real HTTP API (uvicorn, SQLite and PostgreSQL); then, the way an attacker
with database access would (a separate engine, plain SQL), every column of every row of every state table is changed,
every row deleted, and a row inserted into every table, one at a time. `wearfed audit verify` (`verify_ledger`) must
name table, key and column of each. The log-only verifier of before the state binding (``state=False``) is run on the
same mutations, so the test prints the before/after figures measured in the same run.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Boolean, DateTime, Float, Integer, LargeBinary, String, delete, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from cloud.audit import LedgerTampered, StateTampered, verify_ledger, verify_state
from cloud.engine import make_engine, make_sessionmaker
from cloud.state_binding import StateNotBound, bound_tables
from tests.cloud.demo_state import build
from tests.conftest import ADMIN_TOKEN, COMPLIANCE_TOKEN, _postgres_url, serve_app

EXPECTED_TABLES = {"users", "enrollment_tokens", "participants", "rounds", "updates", "refusals", "privacy_ledger",
                   "alerts", "models", "evaluations", "gate_checks", "drift_reports", "drift_baselines", "settings",
                   "model_explanations"}


@dataclass
class Demo:
    db_url: str
    sessions: object
    engine: object  # the attacker's own engine
    cloud: object


def _gates(tmp: Path) -> Path:
    """The fake nodes' random updates catch no hypo in the validation set: hypo gates off, so the demo promotes."""
    path = tmp / "gates.toml"
    path.write_text("[accuracy]\nhypo_sens30_min = false\n[fairness]\nworst_group_hypo_sens30_min = false\n"
                    "group_hypo_sens30_gap_max = false\n")
    return path


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    from cloud.app import CloudSettings, create_app
    from tests.cloud.governance_helpers import write_validation_set

    tmp = tmp_path_factory.mktemp(f"state-{request.param}")
    urls = _postgres_url() if request.param == "postgres" else iter([f"sqlite:///{tmp / 'cloud.db'}"])
    db_url = next(urls)
    settings = CloudSettings(db_url=db_url, state_dir=tmp / "state", admin_token=ADMIN_TOKEN,
                             compliance_token=COMPLIANCE_TOKEN, dev_insecure_custodian=True, tick_seconds=0.1,
                             validation_file=write_validation_set(tmp / "val.npz"), gates_file=_gates(tmp))
    # No TFLite export: its job (minutes under load) appends `release.tflite_signed` whenever it finishes, which raced
    # the sweep below (an entry appended between reading the entries and the checkpoints); it writes no state row.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WEARFED_TFLITE_EXPORT", "off")
        app = create_app(settings)
    with serve_app(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        build(http)
        app.state.cloud.aggregation.stop()
        app.state.cloud.explainer.stop(timeout=600)  # its queued versions explained first: no writer left
    engine = make_engine(db_url)
    yield Demo(db_url, make_sessionmaker(engine), engine, app.state.cloud)
    engine.dispose()
    app.state.cloud.close()
    next(urls, None)  # drops the PostgreSQL database


def _alternatives(col, value: object, existing: list) -> list:  # noqa: ANN001 - a sqlalchemy Column
    """Values of the column's type that differ from `value`, most natural first (FK values that exist next)."""
    t = col.type
    others = [v for v in existing if v != value and v is not None]
    if isinstance(t, LargeBinary):
        raw = bytes(value or b"\0")
        return [raw[:-1] + bytes([raw[-1] ^ 1])]
    if isinstance(t, Boolean):
        return [not value]
    if isinstance(t, Integer):
        base = value if isinstance(value, int) else 0
        return [base + 1, *others, base - 1, base + 1000]
    if isinstance(t, Float):
        return [(value or 0.0) + 0.5]
    if isinstance(t, DateTime):
        return [(value or dt.datetime(2026, 1, 1)) + dt.timedelta(seconds=1)]
    if isinstance(t, String):
        text = value or "x"
        return [*others, text[:-1] + ("y" if text[-1:] != "y" else "z")]
    # JSON
    if isinstance(value, list):
        return [[*value, "tampered"]]
    if isinstance(value, dict):
        return [{**value, "tampered": 1}]
    return [{"tampered": 1}]


def _distinct(values) -> list:  # noqa: ANN001
    out: dict[str, object] = {}
    for v in values:
        if v is not None:
            out.setdefault(repr(v), v)
    return [out[k] for k in sorted(out)]


def _try(demo: Demo, stmt) -> bool:  # noqa: ANN001
    """Run one attacker statement in its own transaction; False if a database constraint refused it."""
    try:
        with demo.engine.begin() as conn:
            conn.execute(stmt)
        return True
    except (IntegrityError, DBAPIError):
        return False


def _differences(demo: Demo) -> list:
    try:
        verify_ledger(demo.sessions)
    except StateTampered as exc:
        return exc.differences
    return []


def _log_only_detects(demo: Demo) -> bool:
    try:
        verify_ledger(demo.sessions, state=False)
    except LedgerTampered:
        return True
    return False


def test_every_single_row_insert_update_delete_is_named(demo: Demo) -> None:
    tables = bound_tables()
    assert set(tables) >= EXPECTED_TABLES
    with demo.engine.connect() as conn:
        contents = {name: [dict(r) for r in conn.execute(select(t)).mappings()] for name, t in tables.items()}
    empty = sorted(n for n in EXPECTED_TABLES if not contents[n])
    assert not empty, f"the demo-like database has no rows in {empty}"
    assert _differences(demo) == []
    tally = {"mutations": 0, "named": 0, "log_only_missed": 0, "refused_by_constraints": 0}

    def check(name: str, key: dict, column: str | None, what: str) -> None:
        diffs = _differences(demo)
        tally["mutations"] += 1
        tally["log_only_missed"] += not _log_only_detects(demo)
        assert diffs, f"{what} of {name} {key} ({column}) was not detected"
        assert {d.table for d in diffs} == {name}, [d.message() for d in diffs]
        if column is not None:
            assert {d.column for d in diffs} == {column}, [d.message() for d in diffs]
        assert all(d.key == {k: _enc(tables[name], k, v) for k, v in key.items()} for d in diffs), \
            [d.message() for d in diffs]
        tally["named"] += 1

    for name, table in tables.items():
        pk = [c.name for c in table.primary_key.columns]
        for row in contents[name]:
            where = [table.c[k] == row[k] for k in pk]
            key = {k: row[k] for k in pk}
            for col in table.columns:
                if col.name in pk:
                    continue
                existing = _distinct(r[col.name] for r in contents[name])
                if col.foreign_keys:
                    ref = next(iter(col.foreign_keys)).column
                    with demo.engine.connect() as conn:
                        existing = list(conn.scalars(select(ref)))
                for alt in _alternatives(col, row[col.name], existing):
                    if _try(demo, update(table).where(*where).values({col.name: alt})):
                        check(name, key, col.name, "update")
                        assert _try(demo, update(table).where(*where).values({col.name: row[col.name]}))
                        break
                else:
                    tally["refused_by_constraints"] += 1
            if _try(demo, delete(table).where(*where)):
                check(name, key, None, "delete")
                assert _try(demo, insert(table).values(row))
            else:
                tally["refused_by_constraints"] += 1
        # one inserted row per table: a copy of the first row under a new key (other columns varied if a
        # constraint refuses the plain copy). Tables the demo leaves empty (consent reports, intrusion locks, the
        # quarantine) are swept by their own tests (tests/cloud/test_consent_reports.py, tests/attacks/).
        if contents[name]:
            _insert_one(demo, table, contents[name][0], contents[name], check, tally)
        assert _differences(demo) == [], f"{name} not restored"
    print(f"\nstate binding sweep ({demo.db_url.split(':')[0]}): {tally}")
    assert tally["named"] == tally["mutations"] > 300
    # what `audit verify` missed before the binding: all but the two changes of the pinned log key (its
    # checkpoint signatures stop verifying)
    assert tally["log_only_missed"] == tally["mutations"] - 2


def _enc(table, column: str, value: object) -> object:  # noqa: ANN001
    from cloud.state_binding import encode_value

    return encode_value(table.c[column], value)


def _insert_one(demo: Demo, table, template: dict, rows: list[dict], check, tally: dict) -> None:  # noqa: ANN001
    pk = [c for c in table.primary_key.columns]
    new = dict(template)
    for c in pk:
        used = {r[c.name] for r in rows}
        new[c.name] = (max(used) + 100) if isinstance(c.type, Integer) else template[c.name][:-1] + "q"
        assert new[c.name] not in used
    attempts = [dict(new)]
    for col in table.columns:
        if col.primary_key:
            continue
        for alt in _alternatives(col, template[col.name], _distinct(r[col.name] for r in rows)):
            attempts.append({**new, col.name: alt})
    for values in attempts:
        if _try(demo, insert(table).values(values)):
            check(table.name, {c.name: values[c.name] for c in pk}, None, "insert")
            assert _try(demo, delete(table).where(*[c == values[c.name] for c in pk]))
            return
    tally["refused_by_constraints"] += 1


def test_cli_names_the_table_key_and_column(demo: Demo) -> None:
    cmd = [sys.executable, "-m", "federation.cli", "audit", "verify", "--db", demo.db_url]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    table = bound_tables()["participants"]
    with demo.engine.begin() as conn:
        key = conn.scalar(select(table.c.public_key).where(table.c.id == "gw-2"))
        conn.execute(update(table).where(table.c.id == "gw-2").values(public_key="A" * 43 + "="))
    try:
        bad = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        with demo.engine.begin() as conn:
            conn.execute(update(table).where(table.c.id == "gw-2").values(public_key=key))
    assert bad.returncode == 1, bad.stdout
    assert 'FAIL:' in bad.stdout and 'table participants key {"id": "gw-2"} column public_key' in bad.stdout


def test_writes_outside_the_store_transaction_are_refused(demo: Demo) -> None:
    from cloud.db import Participant, Round

    store = demo.cloud.store
    with pytest.raises(StateNotBound, match="bulk statement on bound table rounds"), store.tx() as s:
        s.execute(update(Round).values(quorum=1))
    with pytest.raises(StateNotBound, match="outside Store.tx"), store.read() as s:
        s.get(Participant, "gw-2").halted = True
        s.flush()
    assert _differences(demo) == []


def test_a_database_from_before_the_binding_is_snapshotted_once(tmp_path: Path) -> None:
    """A database whose rows predate the binding: the first start logs them in a ``state.binding`` snapshot."""
    from cloud.audit import AuditLog
    from cloud.db import User
    from cloud.record_db import Event
    from cloud.store import Store

    url = f"sqlite:///{tmp_path / 'old.db'}"
    sessions = make_sessionmaker(make_engine(url))
    with sessions.begin() as s:  # as an older version left it: rows, no binding entry
        s.add(User(name="old-admin", role="admin", token_sha256="0" * 64, created_by="bootstrap"))
    with pytest.raises(StateTampered, match="binding"):
        verify_state(sessions)
    log = AuditLog.from_state_dir(tmp_path / "state")
    Store(sessions, log)
    Store(sessions, log)  # a second start adds nothing
    with sessions() as s:
        kinds = list(s.scalars(select(Event.kind).order_by(Event.seq)))
        binding = s.scalar(select(Event).where(Event.kind == "state.binding"))
    assert kinds == ["state.binding", "audit.key_pinned"]
    assert binding.detail["snapshot_rows"] == 1 and binding.state_rows[0]["key"] == {"name": "old-admin"}
    verify_ledger(sessions)
