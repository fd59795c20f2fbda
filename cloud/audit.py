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

from cloud.db import CheckpointRow, Event, Setting, utcnow
from federation.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint
from federation.errors import SchemaError, WearfedError
from federation.merkle import (
    MerkleLog,
    VerificationError,
    extend_frontier,
    frontier_root,
    leaf_hash,
    verify_consistency,
)
from federation.signing import canonical_json, load_or_create_key, public_key_b64

ORIGIN = "wearfed.cloud/audit-log"
LOG_KEY_SETTING = "audit_log_public_key"


class LedgerTampered(WearfedError):
    """The audit ledger does not match its signed checkpoints; `seq` names the first bad entry (or None)."""

    def __init__(self, message: str, *, seq: int | None) -> None:
        super().__init__(message)
        self.seq = seq


def normalise(detail: dict) -> dict:
    """The detail exactly as JSON will give it back (tuples become lists, keys strings)."""
    return json.loads(canonical_json(json.loads(json.dumps(detail, default=str))))


def entry_bytes(*, seq: int, at: str, kind: str, actor: str, detail: dict) -> bytes:
    return canonical_json({"seq": seq, "at": at, "kind": kind, "actor": actor, "detail": detail})


def row_bytes(e: Event) -> bytes:
    return entry_bytes(seq=e.seq, at=e.at, kind=e.kind, actor=e.actor, detail=e.detail)


class AuditLog:
    """Appends entries inside the caller's transaction; the caller serialises appends (one writer)."""

    def __init__(self, key: Ed25519PrivateKey, *, origin: str = ORIGIN) -> None:
        self._key = key
        self.origin = origin
        self.public_key_b64 = public_key_b64(key)

    @classmethod
    def from_state_dir(cls, state_dir: Path) -> AuditLog:
        return cls(load_or_create_key(state_dir / "audit-log-key.pem"))

    def pin_key(self, sessions: sessionmaker) -> None:
        """Record the log's public key in the database on first start; refuse a different key later."""
        with sessions.begin() as s:
            row = s.get(Setting, LOG_KEY_SETTING)
            if row is None:
                s.add(Setting(key=LOG_KEY_SETTING, value=self.public_key_b64))
            elif row.value != self.public_key_b64:
                raise LedgerTampered(f"this database's audit log is signed by key {row.value}, "
                                     f"not by this state directory's key {self.public_key_b64}", seq=None)

    def append(self, s: Session, kind: str, actor: str, detail: dict) -> int:
        last = s.scalar(select(CheckpointRow).order_by(CheckpointRow.tree_size.desc()).limit(1))
        size = last.tree_size if last is not None else 0
        frontier = [bytes.fromhex(h) for h in last.frontier] if last is not None else []
        at = utcnow().isoformat()
        detail = normalise(detail)
        data = entry_bytes(seq=size, at=at, kind=kind, actor=actor[:64], detail=detail)
        frontier = extend_frontier(frontier, size, leaf_hash(data))
        cp = Checkpoint(origin=self.origin, tree_size=size + 1, root_hash=frontier_root(frontier))
        s.add(Event(seq=size, at=at, kind=kind, actor=actor[:64], detail=detail))
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
    with their checkpoints, which the database alone cannot show."""
    report = verify_ledger(sessions, public_key=public_key)
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
    return report


def verify_ledger(sessions: sessionmaker, *, public_key: str | None = None) -> LedgerReport:
    """Recompute the tree from the rows; check every checkpoint's signature, root and consistency.

    Returns a report; raises `LedgerTampered` naming the first entry that was altered, deleted, reordered
    or inserted. Without `public_key` the key recorded in the database is trusted (and a warning says so).
    """
    warnings = []
    with sessions() as s:
        if public_key is None:
            row = s.get(Setting, LOG_KEY_SETTING)
            if row is None:
                raise LedgerTampered("no audit log key recorded in this database; pass --log-key", seq=None)
            public_key = row.value
            warnings.append("trusting the log key stored in the database; pin it with --log-key")
        key = load_public_key(public_key)
        events = s.scalars(select(Event).order_by(Event.seq, Event.id)).all()
        checkpoints = s.scalars(select(CheckpointRow).order_by(CheckpointRow.tree_size)).all()

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
    return LedgerReport(entries=len(events), checkpoints=len(checkpoints), root_hex=log.root().hex(),
                        public_key=public_key, warnings=warnings)


def public_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
