"""State bound to the audit log: every row of every state table is committed, as canonical content, in the log entry
of the transaction that inserted, changed or deleted it, so the log alone re-derives the tables.

Bound tables are all tables of `cloud.db.Base.metadata` except the log's own (``events``, ``checkpoints``) and those
named in `UNBOUND` (none today): a table added later is bound without further code. Capture is generic: a
session event (``after_flush``) records which rows of bound tables a `cloud.store.Store.tx` session inserted, updated
or deleted; `drain` re-reads each such row from the database inside the transaction and returns one change per row::

    {"op": "insert" | "update" | "delete", "table": "participants", "key": {"id": "gw-1"}, "row": {...}}

``row`` (absent for deletes) holds every column in canonical form (`encode_value`): timestamps as ISO-8601 UTC,
non-finite floats as strings, JSON as JSON, and large binary columns (ciphertexts, aggregates, weights) as
``{"sha256": hex, "bytes": n}``. The store puts the changes into the audit entry it appends next (its ``rows``,
hashed into the Merkle leaf beside ``detail``), or into a ``state.changed`` entry at commit. A write to a bound
table outside `Store.tx`, or a bulk UPDATE/DELETE/INSERT statement on one through the store's sessions, raises
`StateNotBound` (it would escape the log).

`differences` replays every entry's changes in log order and compares the result with the database, naming table,
key and column of each difference (`cloud.audit.StateTampered`). The first entry, ``state.binding``, snapshots
whatever rows a database held before binding existed (a database from an older version: trusted on upgrade, said
in its detail).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import JSON, LargeBinary, Table, event, inspect, select
from sqlalchemy.orm import Session, sessionmaker

from cloud.db import Base
from cloud.record_db import Event
from federation.errors import WearfedError

LOG_TABLES = frozenset({"events", "checkpoints"})
UNBOUND: frozenset[str] = frozenset()  # tables deliberately outside the binding (each needs a reason here)
BINDING_KIND = "state.binding"
SNAPSHOT_KIND = "state.snapshot"
CHANGED_KIND = "state.changed"
BINDING_VERSION = 1
SNAPSHOT_CHUNK = 200  # rows per snapshot entry when binding a database that already holds state
_TOUCHED = "wearfed.touched"  # session.info: (table, key tuple) -> first op, in order
_BOUND_TX = "wearfed.bound_tx"  # session.info flag set by Store.tx


class StateNotBound(WearfedError):
    """A write to a bound table that would escape the audit log (outside Store.tx, or a bulk statement)."""


@dataclass(frozen=True)
class Difference:
    """One difference: `column` is None for a whole row inserted or deleted behind the log's back."""

    table: str
    key: dict
    column: str | None
    logged: object
    found: object
    seq: int | None  # the entry that last logged this row (None: never logged)

    def message(self) -> str:
        key = json.dumps(self.key, sort_keys=True)
        where = f"last logged in entry {self.seq}" if self.seq is not None else "never logged"
        if self.column is None and self.found is None:
            return f"table {self.table} key {key}: row deleted behind the log's back ({where})"
        if self.column is None:
            return f"table {self.table} key {key}: row not in the log (inserted behind its back)"
        return (f"table {self.table} key {key} column {self.column}: the log says {_short(self.logged)}, the "
                f"database has {_short(self.found)} ({where})")


def _short(v: object) -> str:
    text = json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


# -- which tables, and canonical content -----------------------------------------------------------------


def bound_tables() -> dict[str, Table]:
    """Every table of the cloud's metadata except the log's own and `UNBOUND`, by name."""
    import cloud.consent_db  # noqa: F401 - registers the consent table on Base.metadata
    import cloud.governance_db  # noqa: F401 - registers the governance tables on Base.metadata
    import cloud.intrusion_db  # noqa: F401 - registers the intrusion response tables on Base.metadata

    return {name: t for name, t in sorted(Base.metadata.tables.items()) if name not in LOG_TABLES | UNBOUND}


def _finite(v: object) -> object:
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)  # 'nan', 'inf', '-inf': canonical JSON refuses non-finite numbers
    if isinstance(v, dict):
        return {str(k): _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


def encode_value(column, value: object) -> object:  # noqa: ANN001 - a sqlalchemy Column
    """A column value in canonical, JSON-safe form (the same for what is logged and what is read back)."""
    if value is None:
        return None
    if isinstance(column.type, LargeBinary) or isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        return {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    if isinstance(column.type, JSON):
        return json.loads(json.dumps(_finite(value), sort_keys=True, default=str))
    return _finite(value)


def encode_row(table: Table, row: Mapping) -> dict:
    return {c.name: encode_value(c, row[c.name]) for c in table.columns}


def row_key(table: Table, row: Mapping) -> dict:
    return {c.name: encode_value(c, row[c.name]) for c in table.primary_key.columns}


def key_text(key: dict) -> str:
    return json.dumps(key, sort_keys=True)


# -- capture -----------------------------------------------------------------------------------------


def install(sessions: sessionmaker) -> None:
    """Record bound-table writes of the store's sessions; refuse those that would escape the log."""
    tables = bound_tables()

    @event.listens_for(sessions, "after_flush")
    def _after_flush(session: Session, _ctx) -> None:  # noqa: ANN001
        touched = session.info.setdefault(_TOUCHED, {})
        for op, objs in (("insert", session.new), ("update", session.dirty), ("delete", session.deleted)):
            for obj in objs:
                state = inspect(obj)
                table = state.mapper.local_table
                if table.name not in tables:
                    continue
                if op == "update" and not session.is_modified(obj, include_collections=False):
                    continue
                if not session.info.get(_BOUND_TX):
                    raise StateNotBound(f"{op} of a {table.name} row outside Store.tx() would escape the audit log")
                key = tuple(state.mapper.primary_key_from_instance(obj))
                touched.setdefault((table.name, key), op)

    @event.listens_for(sessions, "do_orm_execute")
    def _bulk(orm_state) -> None:  # noqa: ANN001
        if orm_state.is_insert or orm_state.is_update or orm_state.is_delete:
            target = getattr(orm_state.statement, "table", None)
            name = getattr(target, "name", None)
            if name in tables:
                raise StateNotBound(f"a bulk statement on bound table {name} would escape the audit log; change "
                                    "rows through the ORM inside Store.tx()")


def mark_bound(session: Session) -> None:
    session.info[_BOUND_TX] = True


def drain(session: Session) -> list[dict]:
    """Flush, then the canonical change of every bound row touched since the last drain, in the order touched."""
    session.flush()
    touched: dict = session.info.pop(_TOUCHED, {})
    if not touched:
        return []
    tables = bound_tables()
    out = []
    for (name, key), op in touched.items():
        table = tables[name]
        pk = list(table.primary_key.columns)
        row = session.execute(select(table).where(*[c == v for c, v in zip(pk, key, strict=True)])).mappings().first()
        enc_key = {c.name: encode_value(c, v) for c, v in zip(pk, key, strict=True)}
        if row is None:
            if op != "insert":  # inserted and deleted in the same window: nothing to log
                out.append({"op": "delete", "table": name, "key": enc_key})
            continue
        out.append({"op": "insert" if op == "insert" else "update", "table": name, "key": enc_key,
                    "row": encode_row(table, row)})
    return out


def snapshot(session: Session) -> list[dict]:
    """Every row of every bound table as an insert (binding a database that already holds state)."""
    out = []
    for name, table in bound_tables().items():
        for row in session.execute(select(table)).mappings():
            out.append({"op": "insert", "table": name, "key": row_key(table, row), "row": encode_row(table, row)})
    return out


def chunks(rows: list[dict], size: int = SNAPSHOT_CHUNK) -> Iterable[list[dict]]:
    for i in range(0, len(rows), size):
        yield rows[i:i + size]


# -- verification ------------------------------------------------------------------------------------


def derive(events: Iterable[Event]) -> tuple[dict[str, dict[str, tuple[dict, int]]], bool]:
    """Replay the log's row changes: table -> key text -> (row, seq of the entry that last logged it); and whether
    the log holds a ``state.binding`` entry at all."""
    state: dict[str, dict[str, tuple[dict, int]]] = {}
    bound = False
    for e in events:
        bound = bound or e.kind == BINDING_KIND
        for ch in e.state_rows or []:
            rows = state.setdefault(ch["table"], {})
            k = key_text(ch["key"])
            if ch["op"] == "delete":
                rows.pop(k, None)
            else:
                rows[k] = (ch["row"], e.seq)
    return state, bound


def differences(session: Session, events: Iterable[Event]) -> list[Difference]:
    """Every difference between the bound tables in the database and the state the log derives."""
    derived, bound = derive(events)
    if not bound:
        return [Difference(table="*", key={}, column="binding", logged=None, found="no state.binding entry",
                           seq=None)]
    out: list[Difference] = []
    for name, table in bound_tables().items():
        logged = derived.get(name, {})
        seen = set()
        for row in session.execute(select(table)).mappings():
            key = row_key(table, row)
            k = key_text(key)
            seen.add(k)
            found = encode_row(table, row)
            if k not in logged:
                out.append(Difference(table=name, key=key, column=None, logged=None, found=found, seq=None))
                continue
            want, seq = logged[k]
            for col in table.columns:
                if _canon(want.get(col.name)) != _canon(found[col.name]):
                    out.append(Difference(table=name, key=key, column=col.name, logged=want.get(col.name),
                                          found=found[col.name], seq=seq))
        for k, (want, seq) in logged.items():
            if k not in seen:
                out.append(Difference(table=name, key=json.loads(k), column=None, logged=want, found=None, seq=seq))
    return out


def _canon(v: object) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"))
