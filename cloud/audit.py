"""The audit ledger: every action is a leaf of an RFC 9162 Merkle tree, each append signed as a checkpoint.

Entry ``seq`` (0-based) is leaf ``seq``; its leaf data is the canonical JSON of ``{seq, at, kind, actor,
detail}`` (`federation.signing.canonical_json`). Each append stores, in the same transaction, a signed C2SP
checkpoint of the new tree size (Ed25519 cloud log key, `federation.checkpoint`) and the right-edge subtree
roots needed to extend it, so the log never has to be reread to append. `verify_ledger` recomputes the tree
from the rows and names the first entry that does not match what was signed.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cloud import state_binding
from cloud.db import utcnow
from cloud.record_db import CheckpointRow, Event, Setting
from federation.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint
from federation.errors import SchemaError, SignatureError, WearfedError
from federation.merkle import (
    MerkleLog,
    VerificationError,
    extend_frontier,
    frontier_root,
    leaf_hash,
    verify_consistency,
)
from federation.signing import (
    CommandSigner,
    canonical_json,
    load_or_create_key,
    load_private_key,
    public_key_b64,
)

ORIGIN = "wearfed.cloud/audit-log"
LOG_KEY_SETTING = "audit_log_public_key"


class LedgerTampered(WearfedError):
    """The audit ledger does not match its signed checkpoints; `seq` names the first bad entry (or None)."""

    def __init__(self, message: str, *, seq: int | None) -> None:
        super().__init__(message)
        self.seq = seq


class StateTampered(LedgerTampered):
    """The state tables differ from what the (verified) log derives; `differences` names table, key and column."""

    def __init__(self, differences: list[state_binding.Difference]) -> None:
        shown = "; ".join(d.message() for d in differences[:20])
        more = f" (and {len(differences) - 20} more)" if len(differences) > 20 else ""
        seqs = [d.seq for d in differences if d.seq is not None]
        super().__init__(f"{len(differences)} state difference(s) from the audit log: {shown}{more}",
                         seq=min(seqs) if seqs else None)
        self.differences = differences


def normalise(detail: dict) -> dict:
    """The detail exactly as JSON will give it back (tuples become lists, keys strings)."""
    return json.loads(canonical_json(json.loads(json.dumps(detail, default=str))))


def entry_bytes(*, seq: int, at: str, kind: str, actor: str, detail: dict, rows: list | None = None) -> bytes:
    """The leaf data: ``rows`` (the state rows the entry commits) is a key only when there are any, so entries
    without rows hash exactly as before the state binding."""
    doc = {"seq": seq, "at": at, "kind": kind, "actor": actor, "detail": detail}
    if rows:
        doc["rows"] = rows
    return canonical_json(doc)


def row_bytes(e: Event) -> bytes:
    return entry_bytes(seq=e.seq, at=e.at, kind=e.kind, actor=e.actor, detail=e.detail, rows=e.state_rows)


@dataclass(frozen=True)
class LogKeySource:
    """Where the log-signing key lives when not in the state directory: a PEM file (encrypted with `passphrase`),
    or an external signer `command` (with its pinned `public_key`, base64). See docs/cloud.md, "The log key"."""

    file: Path | None = None
    passphrase: bytes | None = None
    command: str | None = None
    public_key: str | None = None


class AuditLog:
    """Appends entries inside the caller's transaction; the caller serialises appends (one writer)."""

    def __init__(self, key: Ed25519PrivateKey | CommandSigner, *, origin: str = ORIGIN) -> None:
        self._key = key
        self.origin = origin
        self.public_key_b64 = public_key_b64(key)

    @classmethod
    def from_state_dir(cls, state_dir: Path) -> AuditLog:
        """The default: ``audit-log-key.pem`` (unencrypted, created on first start) in the state directory."""
        return cls(load_or_create_key(state_dir / "audit-log-key.pem"))

    @classmethod
    def from_source(cls, state_dir: Path, source: LogKeySource | None) -> AuditLog:
        """The key `source` names, or the state directory's when it names none."""
        if source is None or (source.file is None and source.command is None):
            return cls.from_state_dir(state_dir)
        if source.command is not None:
            if not source.public_key:
                raise SignatureError("an external log signer needs its public key (--log-public-key)")
            return cls(CommandSigner(source.command, public_key=source.public_key))
        if not source.file.is_file():
            raise SignatureError(f"log key file {source.file} does not exist (create it with "
                                 "`wearfed cloud init-log-key`)")
        return cls(load_private_key(source.file, passphrase=source.passphrase))

    def append(self, s: Session, kind: str, actor: str, detail: dict, *, rows: list[dict] | None = None) -> int:
        """Append one entry (with the state rows it commits, `cloud.state_binding`); returns its seq."""
        rows = normalise({"rows": rows})["rows"] if rows else None
        last = s.scalar(select(CheckpointRow).order_by(CheckpointRow.tree_size.desc()).limit(1))
        size = last.tree_size if last is not None else 0
        frontier = [bytes.fromhex(h) for h in last.frontier] if last is not None else []
        at = utcnow().isoformat()
        detail = normalise(detail)
        data = entry_bytes(seq=size, at=at, kind=kind, actor=actor[:64], detail=detail, rows=rows)
        frontier = extend_frontier(frontier, size, leaf_hash(data))
        cp = Checkpoint(origin=self.origin, tree_size=size + 1, root_hash=frontier_root(frontier))
        s.add(Event(seq=size, at=at, kind=kind, actor=actor[:64], detail=detail, state_rows=rows))
        s.add(CheckpointRow(tree_size=size + 1, body=cp.body().decode(),
                            signature=base64.b64encode(sign_checkpoint(cp, self._key)).decode(),
                            frontier=[h.hex() for h in frontier]))
        s.flush()
        return size


@dataclass
class LedgerReport:
    entries: int
    checkpoints: int
    root_hex: str
    public_key: str
    warnings: list[str] = field(default_factory=list)


def load_public_key(text: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except ValueError as exc:
        raise LedgerTampered(f"audit log public key {text!r} is not a base64 Ed25519 key", seq=None) from exc


def verify_witness(sessions: sessionmaker, witness: dict, *, public_key: str | None = None) -> LedgerReport:
    """Verify the ledger, then check it still contains the tree of a checkpoint saved earlier outside the
    database (``GET /v1/audit/checkpoint`` output): this catches truncation of the newest entries together
    with their checkpoints, which the database alone cannot show. The state tables are checked last."""
    report = verify_ledger(sessions, public_key=public_key, state=False)
    key = load_public_key(public_key or witness.get("public_key", ""))
    try:
        cp = Checkpoint.from_body(str(witness["body"]).encode())
        verify_checkpoint(cp, base64.b64decode(witness["signature"]), key)
    except (KeyError, SchemaError, VerificationError, ValueError) as exc:
        raise LedgerTampered(f"the saved checkpoint does not verify: {exc}", seq=None) from exc
    if cp.tree_size > report.entries:
        raise LedgerTampered(f"a checkpoint of {cp.tree_size} entries was saved, the ledger now holds "
                             f"{report.entries}: entry {report.entries} onwards was deleted", seq=report.entries)
    with sessions() as s:
        events = s.scalars(select(Event).where(Event.seq < cp.tree_size).order_by(Event.seq)).all()
    log = MerkleLog()
    for e in events:
        log.append(row_bytes(e))
    if log.root() != cp.root_hash:
        raise LedgerTampered(f"the ledger's first {cp.tree_size} entries do not hash to the saved checkpoint's "
                             "root: history was rewritten and re-signed", seq=None)
    verify_state(sessions)
    return report


def verify_state(sessions: sessionmaker) -> None:
    """Re-derive every state table from the log and compare it with the database (after the log is verified)."""
    with sessions() as s:
        events = s.scalars(select(Event).order_by(Event.seq)).all()
        diffs = state_binding.differences(s, events)
    if diffs:
        raise StateTampered(diffs)


def _check_stored_key(events: list[Event], stored: str | None) -> None:
    """The key row the verifier is about to trust must be the one the log committed (it is a bound row too)."""
    derived, _ = state_binding.derive(events)
    logged = derived.get(Setting.__tablename__, {}).get(state_binding.key_text({"key": LOG_KEY_SETTING}))
    if logged is None or logged[0].get("value") == stored:
        return
    key = {"key": LOG_KEY_SETTING}
    if stored is None:
        diff = state_binding.Difference(table="settings", key=key, column=None, logged=logged[0], found=None,
                                        seq=logged[1])
    else:
        diff = state_binding.Difference(table="settings", key=key, column="value", logged=logged[0]["value"],
                                        found=stored, seq=logged[1])
    raise StateTampered([diff])


def verify_ledger(sessions: sessionmaker, *, public_key: str | None = None, state: bool = True) -> LedgerReport:
    """Recompute the tree from the rows; check every checkpoint's signature, root and consistency; then re-derive
    every state table from the log and compare it with the database (`cloud.state_binding`).

    Returns a report; raises `LedgerTampered` naming the first entry that was altered, deleted, reordered
    or inserted, or `StateTampered` naming table, key and column of every state row changed behind the log's
    back. Without `public_key` the key recorded in the database is trusted (and a warning says so).
    """
    warnings = []
    with sessions() as s:
        events = s.scalars(select(Event).order_by(Event.seq, Event.id)).all()
        checkpoints = s.scalars(select(CheckpointRow).order_by(CheckpointRow.tree_size)).all()
        if public_key is None:
            row = s.get(Setting, LOG_KEY_SETTING)
            _check_stored_key(events, row.value if row is not None else None)
            if row is None:
                raise LedgerTampered("no audit log key recorded in this database; pass --log-key", seq=None)
            public_key = row.value
            warnings.append("trusting the log key stored in the database; pin it with --log-key")
        key = load_public_key(public_key)

    log = MerkleLog()
    for i, e in enumerate(events):
        if e.seq != i:
            what = "deleted" if e.seq > i else "duplicated or inserted"
            raise LedgerTampered(f"entry {i}: sequence broken (next row has seq {e.seq}, id {e.id}): "
                                 f"an entry was {what}", seq=i)
        log.append(row_bytes(e))
    by_size = {c.tree_size: c for c in checkpoints}
    prev: Checkpoint | None = None
    for size in range(1, len(events) + 1):
        row = by_size.get(size)
        e = events[size - 1]
        if row is None:
            raise LedgerTampered(f"entry {size - 1} (id {e.id}, {e.kind}) has no signed checkpoint of tree size "
                                 f"{size}: it was inserted, or its checkpoint deleted", seq=size - 1)
        try:
            cp = Checkpoint.from_body(row.body.encode())
            verify_checkpoint(cp, base64.b64decode(row.signature), key)
        except (SchemaError, VerificationError, ValueError) as exc:
            raise LedgerTampered(f"checkpoint of tree size {size} is not validly signed ({exc}); "
                                 f"first entry it covers that is unproven: {size - 1}", seq=size - 1) from exc
        if cp.tree_size != size or cp.origin != ORIGIN:
            raise LedgerTampered(f"checkpoint row {size} holds a checkpoint for size {cp.tree_size} of "
                                 f"{cp.origin!r}", seq=size - 1)
        calculated = log.root(size)
        if calculated != cp.root_hash:
            raise LedgerTampered(
                f"entry {size - 1} (id {e.id}, kind {e.kind!r}, actor {e.actor!r}, at {e.at}) was altered, "
                f"reordered or inserted: the tree of size {size} hashes to {calculated.hex()}, the signed "
                f"checkpoint says {cp.root_hash.hex()}", seq=size - 1)
        if prev is not None and (size & (size - 1) == 0 or size == len(events)):
            try:
                verify_consistency(old_size=prev.tree_size, new_size=size, old_root=prev.root_hash,
                                   new_root=cp.root_hash, proof=log.consistency_proof(prev.tree_size, size))
            except VerificationError as exc:
                raise LedgerTampered(f"checkpoint {size} is not consistent with checkpoint {prev.tree_size}: "
                                     f"{exc}", seq=prev.tree_size) from exc
            prev = cp
        elif prev is None:
            prev = cp
    extra = [c.tree_size for c in checkpoints if c.tree_size > len(events)]
    if extra:
        raise LedgerTampered(f"checkpoints exist for tree size {extra[0]} but the ledger holds only "
                             f"{len(events)} entries: entry {len(events)} was deleted", seq=len(events))
    if state:
        verify_state(sessions)
    return LedgerReport(entries=len(events), checkpoints=len(checkpoints), root_hex=log.root().hex(),
                        public_key=public_key, warnings=warnings)


def public_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
