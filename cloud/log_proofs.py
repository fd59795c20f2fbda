"""Proofs over the audit log for auditors, custodians and witnesses: the RFC 9162 tree kept in memory and extended
from the database on demand (only entries not seen yet are read), inclusion proofs, consistency proofs between two
tree sizes, and the signed checkpoint of a given size.

The tree is this server's view of its own log: entries are read once, in seq order; a database whose rows were
rewritten later is caught by `wearfed audit verify` and by the nodes' witnesses (a proof from the old view no longer
matches a re-signed history), not here.
"""

from __future__ import annotations

import threading

from sqlalchemy import select

from cloud.audit import row_bytes
from cloud.errors import NotFound
from cloud.record_db import CheckpointRow, Event
from cloud.store import Store
from federation.merkle import MerkleLog
from federation.responses import CheckpointView


class LogProofs:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._tree = MerkleLog()
        self._lock = threading.Lock()

    def tree(self) -> MerkleLog:
        """The tree of every committed entry (read-only use; extended under a lock)."""
        with self._lock:
            with self.store.read() as s:
                for e in s.scalars(select(Event).where(Event.seq >= self._tree.size).order_by(Event.seq)):
                    if e.seq != self._tree.size:  # a gap: an entry of a transaction not yet committed
                        break
                    self._tree.append(row_bytes(e))
            return self._tree

    def checkpoint(self, tree_size: int | None = None) -> CheckpointView:
        """The signed checkpoint of `tree_size` entries (default: the newest)."""
        with self.store.read() as s:
            q = select(CheckpointRow)
            q = q.where(CheckpointRow.tree_size == tree_size) if tree_size is not None else \
                q.order_by(CheckpointRow.tree_size.desc()).limit(1)
            c = s.scalar(q)
        if c is None:
            raise NotFound(f"no signed checkpoint of tree size {tree_size}")
        return CheckpointView(tree_size=c.tree_size, body=c.body, signature=c.signature,
                              public_key=self.store.audit.public_key_b64)

    def inclusion(self, seq: int, tree_size: int | None = None) -> tuple[int, bytes, list[bytes]]:
        """(tree size, root, audit path) of entry `seq` in the tree of `tree_size` entries (default: all)."""
        tree = self.tree()
        size = tree.size if tree_size is None else tree_size
        if not 0 <= seq < size or size > tree.size:
            raise NotFound(f"audit entry {seq} is not in a tree of {size} entries (the log holds {tree.size})")
        return size, tree.root(size), tree.inclusion_proof(seq, size)

    def consistency(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 9162 consistency proof from `old_size` to `new_size` entries."""
        tree = self.tree()
        if not 0 <= old_size <= new_size <= tree.size:
            raise NotFound(f"no consistency proof from {old_size} to {new_size}: the log holds {tree.size} entries")
        return tree.consistency_proof(old_size, new_size)
