"""RFC 9162 (RFC 6962) Merkle tree hashing, inclusion and consistency proofs, for the cloud audit ledger.

Hash is SHA-256 with domain separation (RFC 9162 section 2.1.1): a leaf is ``H(0x00 || data)`` and an
interior node is ``H(0x01 || left || right)``; the empty tree hashes to ``H("")``. Generators
(:func:`inclusion_proof`, :func:`consistency_proof`) raise ``ValueError`` on impossible arguments, because
that is a bug in the caller. Verifiers (:func:`verify_inclusion`, :func:`verify_consistency`) return ``None``
and raise :class:`VerificationError`, naming expected and calculated values in hex, for every input that
does not prove what it claims, including malformed hashes, sizes and proof elements.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from federation.errors import WearfedError

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT_HASH = hashlib.sha256(b"").digest()


class VerificationError(WearfedError):
    """A Merkle proof, root or signed checkpoint does not verify; the message gives expected vs calculated."""


def leaf_hash(data: bytes) -> bytes:
    """Hash of one leaf, ``SHA-256(0x00 || data)`` (RFC 9162 section 2.1.1)."""
    return hashlib.sha256(LEAF_PREFIX + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash of an interior node, ``SHA-256(0x01 || left || right)`` (RFC 9162 section 2.1.1)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def root_hash(leaves: Sequence[bytes]) -> bytes:
    """Merkle Tree Hash of raw leaf data, MTH(D[n]) (RFC 9162 section 2.1.1); ``SHA-256("")`` when empty."""
    return _fold_right_edge(_append_all(leaf_hash(d) for d in leaves))


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """Merkle Tree Hash of a tree given its leaf hashes (RFC 9162 section 2.1.1), in O(n) time."""
    return _subtree_hash(hashes, 0, len(hashes))


def inclusion_proof(leaf_index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Audit path PATH(m, D[n]) for leaf ``leaf_index`` (RFC 9162 section 2.1.3.1), ordered leaf to root.

    Raises ``ValueError`` unless ``0 <= leaf_index < len(leaf_hashes)``.
    """
    return _inclusion(leaf_index, len(leaf_hashes), lambda lo, hi: _subtree_hash(leaf_hashes, lo, hi))


def _inclusion(leaf_index: int, n: int, subtree: Callable[[int, int], bytes]) -> list[bytes]:
    if not 0 <= leaf_index < n:
        raise ValueError(f"leaf_index {leaf_index} is outside a tree of size {n}")
    top_down: list[bytes] = []
    lo, hi = 0, n
    while hi - lo > 1:
        k = _largest_power_of_two_below(hi - lo)
        if leaf_index < lo + k:
            top_down.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            top_down.append(subtree(lo, lo + k))
            lo += k
    return top_down[::-1]


def consistency_proof(old_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Consistency proof PROOF(m, D[n]) from ``old_size`` to ``len(leaf_hashes)`` (RFC 9162 section 2.1.4.1).

    The proof is empty when ``old_size`` is 0 or equal to the current size (nothing to prove). Raises
    ``ValueError`` unless ``0 <= old_size <= len(leaf_hashes)``.
    """
    return _consistency(old_size, len(leaf_hashes), lambda lo, hi: _subtree_hash(leaf_hashes, lo, hi))


def _consistency(old_size: int, n: int, subtree: Callable[[int, int], bytes]) -> list[bytes]:
    if not 0 <= old_size <= n:
        raise ValueError(f"old_size {old_size} is outside 0..{n}")
    if old_size in (0, n):
        return []
    top_down: list[bytes] = []
    lo, hi, m, whole_old_tree = 0, n, old_size, True
    while m != hi - lo:
        k = _largest_power_of_two_below(hi - lo)
        if m <= k:
            top_down.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            top_down.append(subtree(lo, lo + k))
            lo, m, whole_old_tree = lo + k, m - k, False
    # SUBPROOF(m, D[m], b): empty if D[m] is the whole old tree (the verifier has its root), else MTH(D[m]).
    seed = [] if whole_old_tree else [subtree(lo, hi)]
    return seed + top_down[::-1]


def verify_inclusion(*, leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree (``tree_size``, ``root``) (RFC 9162 2.1.3.2).

    ``tree_size`` and ``root`` must come together from one verified checkpoint: the proof binds the leaf to
    the pair, not the size to the root. Returns ``None``; raises :class:`VerificationError` otherwise (an
    empty tree includes nothing).
    """
    leaf = _as_hash(leaf_hash, "leaf hash")
    expected_root = _as_hash(root, "root")
    index = _as_size(index, "index")
    tree_size = _as_size(tree_size, "tree size")
    path = _as_proof(proof)
    if index >= tree_size:
        raise VerificationError(f"index {index} is outside a tree of size {tree_size}")
    fn, sn = index, tree_size - 1
    r = leaf
    for i, p in enumerate(path):
        if sn == 0:
            raise VerificationError(
                f"inclusion proof too long: expected {i} elements, calculated from index {index} "
                f"and tree size {tree_size}; got {len(path)}"
            )
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError(
            f"inclusion proof too short for index {index} in tree size {tree_size}: got {len(path)} elements"
        )
    _check_equal("root", expected=expected_root, calculated=r)


def verify_consistency(
    *, old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that tree (``new_size``, ``new_root``) extends (``old_size``, ``old_root``) (RFC 9162 2.1.4.2).

    Edge cases RFC 9162 leaves to the caller, defined here:

    - ``old_size == new_size``: the proof must be empty and the roots equal (and, for size 0, equal to
      ``SHA-256("")``).
    - ``old_size == 0 < new_size``: the empty tree is a prefix of every tree, so the proof must be empty and
      ``old_root`` must be ``SHA-256("")``; ``new_root`` is only checked to be a well-formed hash.
    - ``old_size > new_size`` or a negative size: never consistent.

    Returns ``None``; raises :class:`VerificationError` otherwise.
    """
    first_hash = _as_hash(old_root, "old root")
    second_hash = _as_hash(new_root, "new root")
    first = _as_size(old_size, "old size")
    second = _as_size(new_size, "new size")
    path = _as_proof(proof)
    if first > second:
        raise VerificationError(f"old size {first} is larger than new size {second}")
    if first == 0 or first == second:
        if path:
            raise VerificationError(
                f"consistency proof from size {first} to {second} must be empty, got {len(path)} elements"
            )
        if first == 0:
            _check_equal("old root of the empty tree", expected=EMPTY_ROOT_HASH, calculated=first_hash)
        if first == second:
            _check_equal("new root (same size as old)", expected=first_hash, calculated=second_hash)
        return
    if not path:
        raise VerificationError(f"consistency proof from size {first} to {second} is empty")
    if first & (first - 1) == 0:
        path = [first_hash, *path]
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for i, c in enumerate(path[1:], start=1):
        if sn == 0:
            raise VerificationError(
                f"consistency proof from size {first} to {second} too long: {len(path) - i} extra elements"
            )
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError(f"consistency proof from size {first} to {second} too short")
    _check_equal("old root", expected=first_hash, calculated=fr)
    _check_equal("new root", expected=second_hash, calculated=sr)


class MerkleLog:
    """Append-only list of leaf hashes with its RFC 9162 root kept up to date in O(log n) per append.

    Besides the leaf hashes it keeps the roots of the perfect subtrees that make up the current tree
    (one per set bit of the size, largest first), so :meth:`root` costs O(log n), and every complete aligned
    subtree hash (``levels[k][i]`` covers leaves ``[i * 2**k, (i + 1) * 2**k)``; about twice the leaf storage),
    so any subtree hash costs O(log n) and proofs and historic roots O(log^2 n): a server answers proofs for
    a long log without rehashing it.
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._leaves: list[bytes] = []
        self._frontier: list[bytes] = []
        self._levels: list[list[bytes]] = [self._leaves]
        for h in leaf_hashes:
            self.append_leaf_hash(h)

    @property
    def size(self) -> int:
        return len(self._leaves)

    def __len__(self) -> int:
        return len(self._leaves)

    @property
    def leaf_hashes(self) -> Sequence[bytes]:
        """The leaf hashes, oldest first (a read-only view, not a copy)."""
        return _ReadOnly(self._leaves)

    def append(self, data: bytes) -> int:
        """Append one entry's raw data; return its leaf index."""
        return self.append_leaf_hash(leaf_hash(data))

    def append_leaf_hash(self, h: bytes) -> int:
        """Append an already computed leaf hash (e.g. when reloading from storage); return its index."""
        if not isinstance(h, bytes | bytearray) or len(h) != HASH_SIZE:
            raise ValueError(f"leaf hash must be {HASH_SIZE} bytes")
        h = bytes(h)
        index = len(self._leaves)
        self._leaves.append(h)
        _push(self._frontier, index, h)
        level, count = 0, index + 1
        while count % 2 == 0:  # a complete aligned subtree just closed at each level where count is even
            if len(self._levels) == level + 1:
                self._levels.append([])
            below = self._levels[level]
            self._levels[level + 1].append(node_hash(below[-2], below[-1]))
            level, count = level + 1, count // 2
        return index

    def root(self, tree_size: int | None = None) -> bytes:
        """Root of the current tree, or of its prefix of ``tree_size`` leaves (recomputed, O(tree_size))."""
        if tree_size is None or tree_size == len(self._leaves):
            return _fold_right_edge(self._frontier)
        if not 0 <= tree_size <= len(self._leaves):
            raise ValueError(f"tree_size {tree_size} is outside 0..{len(self._leaves)}")
        return self._range(0, tree_size)

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> list[bytes]:
        """Audit path for leaf ``index`` in the tree of ``tree_size`` leaves (default: current size)."""
        return _inclusion(index, self._size(tree_size), self._range)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Consistency proof from ``old_size`` to ``new_size`` leaves (default: current size)."""
        return _consistency(old_size, self._size(new_size), self._range)

    def _size(self, tree_size: int | None) -> int:
        if tree_size is None:
            return len(self._leaves)
        if not 0 <= tree_size <= len(self._leaves):
            raise ValueError(f"tree_size {tree_size} is outside 0..{len(self._leaves)}")
        return tree_size

    def _range(self, lo: int, hi: int) -> bytes:
        """MTH of leaves ``[lo, hi)`` from the stored complete subtrees (RFC 9162 section 2.1.1's split)."""
        n = hi - lo
        if n <= 0:
            return EMPTY_ROOT_HASH
        if n & (n - 1) == 0 and lo % n == 0:
            k = n.bit_length() - 1
            return self._levels[k][lo >> k]
        k = _largest_power_of_two_below(n)
        return node_hash(self._range(lo, lo + k), self._range(lo + k, hi))


def extend_frontier(frontier: Sequence[bytes], size: int, h: bytes) -> list[bytes]:
    """Right-edge perfect-subtree roots (largest first) of a tree of ``size`` leaves, after appending leaf hash
    ``h``: lets a log persist O(log n) hashes and still extend its root in O(log n) (RFC 9162 section 2.1.1)."""
    if len(frontier) != bin(size).count("1"):
        raise ValueError(f"a frontier of {len(frontier)} hashes cannot belong to a tree of size {size}")
    out = [bytes(x) for x in frontier]
    _push(out, size, _as_hash(h, "leaf hash"))
    return out


def frontier_root(frontier: Sequence[bytes]) -> bytes:
    """Root hash of the tree whose right-edge perfect-subtree roots are ``frontier`` (largest first)."""
    return _fold_right_edge(list(frontier))


# ---------------------------------------------------------------------------------------------- internals


class _ReadOnly(Sequence[bytes]):
    """Read-only view of a list, so callers cannot rewrite history in place."""

    def __init__(self, items: list[bytes]) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):  # type: ignore[override]
        return self._items[i]


def _largest_power_of_two_below(n: int) -> int:
    """The k of RFC 9162 section 2.1.1: the largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _push(frontier: list[bytes], count: int, h: bytes) -> None:
    """Add leaf number ``count`` (0-based) to the list of perfect-subtree roots, merging equal-size ones."""
    while count & 1:
        h = node_hash(frontier.pop(), h)
        count >>= 1
    frontier.append(h)


def _append_all(hashes: Iterable[bytes]) -> list[bytes]:
    frontier: list[bytes] = []
    for count, h in enumerate(hashes):
        _push(frontier, count, h)
    return frontier


def _fold_right_edge(frontier: Sequence[bytes]) -> bytes:
    """Root from the perfect-subtree roots, largest first: MTH = H(P0, H(P1, ... H(Pk-1, Pk)))."""
    if not frontier:
        return EMPTY_ROOT_HASH
    r = frontier[-1]
    for h in reversed(frontier[:-1]):
        r = node_hash(h, r)
    return r


def _subtree_hash(hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    """MTH of the leaves ``hashes[lo:hi]`` (lo < hi, or the empty tree when lo == hi)."""
    return _fold_right_edge(_append_all(hashes[i] for i in range(lo, hi)))


def _as_hash(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise VerificationError(f"{what} must be bytes, got {type(value).__name__}")
    value = bytes(value)
    if len(value) != HASH_SIZE:
        raise VerificationError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}: {value.hex()}")
    return value


def _as_size(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise VerificationError(f"{what} must be an int, got {type(value).__name__}")
    if value < 0:
        raise VerificationError(f"{what} must not be negative, got {value}")
    return value


def _as_proof(proof: object) -> list[bytes]:
    if isinstance(proof, bytes | bytearray | memoryview | str) or not isinstance(proof, Sequence):
        raise VerificationError(f"proof must be a sequence of hashes, got {type(proof).__name__}")
    return [_as_hash(p, f"proof element {i}") for i, p in enumerate(proof)]


def _check_equal(what: str, *, expected: bytes, calculated: bytes) -> None:
    if expected != calculated:
        raise VerificationError(f"{what} mismatch: expected {expected.hex()}, calculated {calculated.hex()}")
