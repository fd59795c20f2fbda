"""What the custodian checks before it decrypts: that every contribution it is asked to sum is what the audit log
committed, proven by inclusion in a signed checkpoint, not what the database's ``updates``/``participants``/``rounds``
rows say now.

`gather` (the aggregator's side) collects, for one round, the log entries that committed the round's row (its
contributors and quorum), each contributor's ``updates`` row (envelope, signature, ciphertext hash) and its
``participants`` row (the enrolled public key), with RFC 9162 inclusion proofs against the newest signed checkpoint.
`verify` (the custodian's side) trusts only the log's public key it was given: it checks the checkpoint's signature,
each entry's inclusion, and that the rows it is handed (with the ciphertext bytes) equal what those entries
committed. Any difference raises `NotInLog` naming participant, table and column.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import select

from cloud.audit import entry_bytes, load_public_key
from cloud.log_proofs import LogProofs
from cloud.record_db import Event
from cloud.store import Store
from federation.checkpoint import Checkpoint, verify_checkpoint
from federation.errors import SchemaError, WearfedError
from federation.merkle import VerificationError, leaf_hash, verify_inclusion


class NotInLog(WearfedError):
    """A contribution differs from what the audit log committed, or its proof does not verify."""


class Contribution(Protocol):
    participant: str
    public_key: str
    envelope: dict
    signature: str
    ciphertext: bytes  # b"" when a region's aggregate carries it
    region: str | None


class RegionSum(Protocol):
    region: str
    public_key: str
    statement: dict
    signature: str
    aggregate: bytes


@dataclass(frozen=True)
class ProvenEntry:
    """One audit entry as committed (its leaf data), with its audit path in the checkpoint's tree."""

    seq: int
    at: str
    kind: str
    actor: str
    detail: dict
    rows: list | None
    proof: list[str]  # hex, leaf to root

    def leaf(self) -> bytes:
        return leaf_hash(entry_bytes(seq=self.seq, at=self.at, kind=self.kind, actor=self.actor, detail=self.detail,
                                     rows=self.rows))

    def row(self, table: str, **match: object) -> dict | None:
        """The last row of `table` this entry committed whose columns equal `match` (None if it has none)."""
        found = None
        for ch in self.rows or []:
            if ch["table"] == table and ch["op"] != "delete" and all(ch["row"].get(k) == v for k, v in match.items()):
                found = ch["row"]
        return found


@dataclass(frozen=True)
class Evidence:
    """A signed checkpoint and the entries that committed one round's state, each proven included in it."""

    checkpoint_body: str
    checkpoint_signature: str
    round_entry: ProvenEntry | None
    updates: dict[str, ProvenEntry] = field(default_factory=dict)  # participant -> entry with its updates row
    enrollments: dict[str, ProvenEntry] = field(default_factory=dict)  # participant -> entry with its key
    region_sums: dict[str, ProvenEntry] = field(default_factory=dict)  # aggregate sha256 -> entry with its row
    region_keys: dict[str, ProvenEntry] = field(default_factory=dict)  # region -> entry with its enrolled key


def gather(store: Store, proofs: LogProofs, round_id: int) -> Evidence:
    """The aggregator's side: the newest checkpoint and the entries that last committed the round's rows."""
    cp = proofs.checkpoint()
    size = cp.tree_size
    round_seq, update_seq, enroll_seq, sum_seq, region_seq = None, {}, {}, {}, {}
    with store.read() as s:
        for e in s.scalars(select(Event).where(Event.seq < size).order_by(Event.seq)):
            for ch in e.state_rows or []:
                row = ch.get("row") or {}
                if ch["table"] == "rounds" and ch["key"] == {"id": round_id}:
                    round_seq = e.seq
                elif ch["table"] == "updates" and row.get("round_id") == round_id:
                    update_seq[row["participant"]] = e.seq
                elif ch["table"] == "participants" and ch["op"] == "insert":
                    enroll_seq[ch["key"]["id"]] = e.seq
                elif ch["table"] == "region_aggregates" and row.get("round_id") == round_id:
                    sum_seq[row["aggregate_sha256"]] = e.seq
                elif ch["table"] == "regions" and ch["op"] != "delete":
                    region_seq[ch["key"]["id"]] = e.seq
        wanted = {round_seq, *update_seq.values(), *enroll_seq.values(), *sum_seq.values(), *region_seq.values()}
        wanted -= {None}
        events = {e.seq: e for e in s.scalars(select(Event).where(Event.seq.in_(wanted)))}

    def proven(seq: int) -> ProvenEntry:
        e = events[seq]
        _size, _root, path = proofs.inclusion(seq, size)
        return ProvenEntry(seq=e.seq, at=e.at, kind=e.kind, actor=e.actor, detail=e.detail, rows=e.state_rows,
                           proof=[h.hex() for h in path])

    return Evidence(checkpoint_body=cp.body, checkpoint_signature=cp.signature,
                    round_entry=proven(round_seq) if round_seq is not None else None,
                    updates={p: proven(q) for p, q in update_seq.items()},
                    enrollments={p: proven(q) for p, q in enroll_seq.items() if p in update_seq},
                    region_sums={d: proven(q) for d, q in sum_seq.items()},
                    region_keys={r: proven(q) for r, q in region_seq.items()})


def verify(evidence: Evidence, *, log_key: str, round_id: int, quorum: int, contributions: Sequence[Contribution],
           region_sums: Sequence[RegionSum] = ()) -> None:
    """The custodian's side: raise `NotInLog` unless every contribution, the round's contributors and its quorum are
    exactly what entries included in a checkpoint signed by `log_key` committed."""
    try:
        cp = Checkpoint.from_body(evidence.checkpoint_body.encode())
        verify_checkpoint(cp, base64.b64decode(evidence.checkpoint_signature), load_public_key(log_key))
    except (SchemaError, VerificationError, ValueError) as exc:
        raise NotInLog(f"the checkpoint offered as evidence does not verify under the log key: {exc}") from exc

    def included(entry: ProvenEntry, what: str) -> None:
        try:
            verify_inclusion(leaf_hash=entry.leaf(), index=entry.seq, tree_size=cp.tree_size,
                             proof=[bytes.fromhex(h) for h in entry.proof], root=cp.root_hash)
        except (VerificationError, ValueError) as exc:
            raise NotInLog(f"{what} (entry {entry.seq}) is not included in the signed checkpoint of "
                           f"{cp.tree_size} entries: {exc}") from exc

    if evidence.round_entry is None:
        raise NotInLog(f"round {round_id}'s row was never committed to the audit log")
    included(evidence.round_entry, f"round {round_id}'s row")
    logged_round = evidence.round_entry.row("rounds", id=round_id)
    names = sorted(c.participant for c in contributions)
    if logged_round is None or sorted(logged_round.get("contributors") or []) != names:
        raise NotInLog(f"round {round_id}: the log commits contributors "
                       f"{(logged_round or {}).get('contributors')}, the database offers {names}")
    if logged_round.get("quorum") != quorum:
        raise NotInLog(f"round {round_id}: the log commits quorum {logged_round.get('quorum')}, the database says "
                       f"{quorum}")
    for c in contributions:
        entry = evidence.updates.get(c.participant)
        if entry is None:
            raise NotInLog(f"no audit entry commits an update of {c.participant} to round {round_id}")
        included(entry, f"the update of {c.participant}")
        logged = entry.row("updates", round_id=round_id, participant=c.participant)
        digest = hashlib.sha256(c.ciphertext).hexdigest()
        offered = {"envelope": c.envelope, "signature": c.signature, "region": c.region,
                   "ciphertext_sha256": c.envelope.get("ciphertext_sha256") if c.region else digest,
                   "ciphertext": {"sha256": digest, "bytes": len(c.ciphertext)}}
        _same_row(logged, offered, what=f"the update of {c.participant}", seq=entry.seq, table="updates")
        _key_logged(evidence.enrollments.get(c.participant), included, name=c.participant, who=c.participant,
                    table="participants", key=c.public_key)
    for g in region_sums:
        digest = hashlib.sha256(g.aggregate).hexdigest()
        entry = evidence.region_sums.get(digest)
        if entry is None:
            raise NotInLog(f"no audit entry commits region {g.region}'s aggregate {digest[:16]}... to round {round_id}")
        included(entry, f"region {g.region}'s aggregate")
        logged = entry.row("region_aggregates", round_id=round_id, aggregate_sha256=digest)
        offered = {"region": g.region, "state": "accepted", "statement": g.statement, "signature": g.signature,
                   "aggregate": {"sha256": digest, "bytes": len(g.aggregate)}}
        _same_row(logged, offered, what=f"region {g.region}'s aggregate", seq=entry.seq, table="region_aggregates")
        _key_logged(evidence.region_keys.get(g.region), included, name=g.region, who=f"region {g.region}",
                    table="regions", key=g.public_key)


def _same_row(logged: dict | None, offered: dict, *, what: str, seq: int, table: str) -> None:
    """NotInLog naming the first column where what the custodian is offered differs from the logged row."""
    for column, value in offered.items():
        if logged is None or logged.get(column) != value:
            raise NotInLog(f"{what} differs from the audit log (entry {seq}) in table {table}, column {column}")


def _key_logged(enrolled: ProvenEntry | None, included: Callable[[ProvenEntry, str], None], *, name: str, who: str,
                table: str, key: str) -> None:
    """The enrollment of `name` is in the log (proven) and committed exactly this public key."""
    if enrolled is None:
        raise NotInLog(f"no audit entry commits the enrollment of {who}")
    included(enrolled, f"the enrollment of {who}")
    row = enrolled.row(table, id=name)
    if row is None or row.get("public_key") != key:
        raise NotInLog(f"the key of {who} differs from the audit log (entry {enrolled.seq}) in table {table}, "
                       "column public_key")
