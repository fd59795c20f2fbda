"""Audit-ledger Merkle tree and signed checkpoints: published RFC 6962 vectors, tampering, properties."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint
from federation.errors import SchemaError
from federation.merkle import (
    EMPTY_ROOT_HASH,
    LEAF_PREFIX,
    NODE_PREFIX,
    MerkleLog,
    VerificationError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_from_leaf_hashes,
    root_hash,
    verify_consistency,
    verify_inclusion,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "merkle"


def _load(name: str) -> dict:
    return json.loads((DATA / name).read_text())


TREE = _load("rfc6962_tree.json")
INCLUSION = _load("inclusion_proofs.json")
CONSISTENCY = _load("consistency_proofs.json")
PROBES = _load("transparency_dev_probes.json")

LEAVES = [bytes.fromhex(h) for h in TREE["leaves_hex"]]
LEAF_HASHES = [bytes.fromhex(h) for h in TREE["node_hashes_hex_by_level"][0]]
ROOTS = [bytes.fromhex(h) for h in TREE["root_hex_by_size"]]


def _hexes(items: list[str]) -> list[bytes]:
    return [bytes.fromhex(h) for h in items]


def _b64(text: str) -> bytes:
    return base64.b64decode(text)


def _flip(data: bytes, pos: int, mask: int = 0x01) -> bytes:
    return data[:pos] + bytes([data[pos] ^ mask]) + data[pos + 1 :]


def _distinct_leaf_hashes(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


# ------------------------------------------------------------ independent oracle: RFC 9162 2.1 as recursion


def _ref_mth(hashes: list[bytes]) -> bytes:
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return hashlib.sha256(b"\x01" + _ref_mth(hashes[:k]) + _ref_mth(hashes[k:])).digest()


def _ref_path(m: int, hashes: list[bytes]) -> list[bytes]:
    if len(hashes) == 1:
        return []
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    if m < k:
        return _ref_path(m, hashes[:k]) + [_ref_mth(hashes[k:])]
    return _ref_path(m - k, hashes[k:]) + [_ref_mth(hashes[:k])]


def _ref_subproof(m: int, hashes: list[bytes], whole: bool) -> list[bytes]:
    n = len(hashes)
    if m == n:
        return [] if whole else [_ref_mth(hashes)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return _ref_subproof(m, hashes[:k], whole) + [_ref_mth(hashes[k:])]
    return _ref_subproof(m - k, hashes[k:], False) + [_ref_mth(hashes[:k])]


# ------------------------------------------------------------------------------------ published vectors


def test_domain_separation_prefixes_are_rfc_values() -> None:
    assert LEAF_PREFIX == b"\x00" and NODE_PREFIX == b"\x01"
    assert EMPTY_ROOT_HASH == ROOTS[0] == root_hash([]) == root_from_leaf_hashes([])


def test_leaf_hashes_match_vectors() -> None:
    assert [leaf_hash(d) for d in LEAVES] == LEAF_HASHES


@pytest.mark.parametrize("size", range(0, 9))
def test_roots_for_sizes_0_to_8_match_vectors(size: int) -> None:
    assert root_hash(LEAVES[:size]) == ROOTS[size]
    assert root_from_leaf_hashes(LEAF_HASHES[:size]) == ROOTS[size]
    assert _ref_mth(LEAF_HASHES[:size]) == ROOTS[size]


def test_complete_subtree_hashes_match_vectors() -> None:
    for level, hexes in enumerate(TREE["node_hashes_hex_by_level"]):
        width = 1 << level
        for i, expected in enumerate(_hexes(hexes)):
            assert root_from_leaf_hashes(LEAF_HASHES[i * width : (i + 1) * width]) == expected


def test_merkle_log_roots_match_vectors_after_each_append() -> None:
    log = MerkleLog()
    assert log.size == 0 and log.root() == ROOTS[0]
    for i, data in enumerate(LEAVES):
        assert log.append(data) == i
        assert log.size == i + 1
        assert log.root() == ROOTS[i + 1]
    for size in range(9):
        assert log.root(size) == ROOTS[size]


@pytest.mark.parametrize("vec", INCLUSION["vectors"], ids=lambda v: f"{v['leaf_index']}of{v['tree_size']}")
def test_inclusion_vectors(vec: dict) -> None:
    index, size, proof = vec["leaf_index"], vec["tree_size"], _hexes(vec["proof_hex"])
    assert inclusion_proof(index, LEAF_HASHES[:size]) == proof
    verify_inclusion(leaf_hash=LEAF_HASHES[index], index=index, tree_size=size, proof=proof, root=ROOTS[size])


@pytest.mark.parametrize("vec", CONSISTENCY["vectors"], ids=lambda v: f"{v['old_size']}to{v['new_size']}")
def test_consistency_vectors(vec: dict) -> None:
    old, new, proof = vec["old_size"], vec["new_size"], _hexes(vec["proof_hex"])
    assert consistency_proof(old, LEAF_HASHES[:new]) == proof
    verify_consistency(old_size=old, new_size=new, old_root=ROOTS[old], new_root=ROOTS[new], proof=proof)


@pytest.mark.parametrize("rec", PROBES["inclusion"], ids=lambda r: r["path"].removeprefix("testdata/"))
def test_recorded_inclusion_probes(rec: dict) -> None:
    kwargs = dict(
        leaf_hash=_b64(rec["leafHash"]),
        index=rec["leafIdx"],
        tree_size=rec["treeSize"],
        proof=[_b64(p) for p in rec["proof"] or []],
        root=_b64(rec["root"]),
    )
    if rec["wantErr"]:
        with pytest.raises(VerificationError):
            verify_inclusion(**kwargs)
    else:
        verify_inclusion(**kwargs)


@pytest.mark.parametrize("rec", PROBES["consistency"], ids=lambda r: r["path"].removeprefix("testdata/"))
def test_recorded_consistency_probes(rec: dict) -> None:
    kwargs = dict(
        old_size=rec["size1"],
        new_size=rec["size2"],
        old_root=_b64(rec["root1"]),
        new_root=_b64(rec["root2"]),
        proof=[_b64(p) for p in rec["proof"] or []],
    )
    if rec["wantErr"]:
        with pytest.raises(VerificationError):
            verify_consistency(**kwargs)
    else:
        verify_consistency(**kwargs)


def test_generators_agree_with_rfc_recursion_for_every_tree_up_to_64() -> None:
    hashes = _distinct_leaf_hashes(64)
    for n in range(1, 65):
        tree = hashes[:n]
        assert root_from_leaf_hashes(tree) == _ref_mth(tree)
        for m in range(n):
            assert inclusion_proof(m, tree) == _ref_path(m, tree)
        for m in range(1, n):
            assert consistency_proof(m, tree) == _ref_subproof(m, tree, True)


# ----------------------------------------------------------------------------------------- adversarial


def _inclusion_cases() -> list[tuple[int, int]]:
    return [(i, n) for n in (1, 2, 3, 5, 7, 8, 13) for i in sorted({0, n // 2, n - 1})]


@pytest.mark.parametrize(("index", "size"), _inclusion_cases())
def test_inclusion_rejects_every_single_byte_flip(index: int, size: int) -> None:
    hashes = _distinct_leaf_hashes(size)
    proof, root = inclusion_proof(index, hashes), root_from_leaf_hashes(hashes)
    good = dict(leaf_hash=hashes[index], index=index, tree_size=size, proof=proof, root=root)
    verify_inclusion(**good)
    for mask in (0x01, 0x80, 0xFF):
        for pos in range(32):
            for k in range(len(proof)):
                bad = [*proof]
                bad[k] = _flip(proof[k], pos, mask)
                with pytest.raises(VerificationError):
                    verify_inclusion(**{**good, "proof": bad})
            with pytest.raises(VerificationError):
                verify_inclusion(**{**good, "root": _flip(root, pos, mask)})
            with pytest.raises(VerificationError):
                verify_inclusion(**{**good, "leaf_hash": _flip(hashes[index], pos, mask)})


@pytest.mark.parametrize(("index", "size"), _inclusion_cases())
def test_inclusion_rejects_wrong_index_size_and_reshaped_proofs(index: int, size: int) -> None:
    hashes = _distinct_leaf_hashes(2 * size + 2)
    tree = hashes[:size]
    proof, root = inclusion_proof(index, tree), root_from_leaf_hashes(tree)
    good = dict(leaf_hash=tree[index], index=index, tree_size=size, proof=proof, root=root)
    for other in range(-2, size + 3):
        if other != index:
            with pytest.raises(VerificationError):
                verify_inclusion(**{**good, "index": other})
    for other in range(-1, 2 * size + 3):
        if other == size:
            continue
        # A stale proof against the real root of the claimed size never verifies...
        if index < other <= len(hashes):
            with pytest.raises(VerificationError):
                verify_inclusion(**{**good, "tree_size": other, "root": root_from_leaf_hashes(hashes[:other])})
        # ...and against this root it fails whenever the claimed size implies another proof shape.
        if not 0 <= index < other or len(_ref_path(index, hashes[:other])) != len(proof):
            with pytest.raises(VerificationError):
                verify_inclusion(**{**good, "tree_size": other})
    extra = leaf_hash(b"extra")
    reshaped = [
        [*proof, extra],
        [*proof, root],
        [extra, *proof],
        [root, *proof],
        [*proof, b""],
        [b"", *proof],
    ]
    if proof:
        reshaped += [proof[:-1], proof[1:], [*proof, proof[-1]], [proof[0], *proof], proof[::-1]]
    for bad in reshaped:
        if bad != proof:
            with pytest.raises(VerificationError):
                verify_inclusion(**{**good, "proof": bad})


def _consistency_cases() -> list[tuple[int, int]]:
    return [(m, n) for n in (1, 2, 3, 4, 5, 7, 8, 9, 13) for m in range(1, n + 1)]


@pytest.mark.parametrize(("old", "new"), _consistency_cases())
def test_consistency_rejects_every_single_byte_flip(old: int, new: int) -> None:
    hashes = _distinct_leaf_hashes(new)
    proof = consistency_proof(old, hashes)
    old_root, new_root = root_from_leaf_hashes(hashes[:old]), root_from_leaf_hashes(hashes)
    good = dict(old_size=old, new_size=new, old_root=old_root, new_root=new_root, proof=proof)
    verify_consistency(**good)
    for mask in (0x01, 0x80, 0xFF):
        for pos in range(32):
            for k in range(len(proof)):
                bad = [*proof]
                bad[k] = _flip(proof[k], pos, mask)
                with pytest.raises(VerificationError):
                    verify_consistency(**{**good, "proof": bad})
            with pytest.raises(VerificationError):
                verify_consistency(**{**good, "old_root": _flip(old_root, pos, mask)})
            with pytest.raises(VerificationError):
                verify_consistency(**{**good, "new_root": _flip(new_root, pos, mask)})


@pytest.mark.parametrize(("old", "new"), _consistency_cases())
def test_consistency_rejects_wrong_sizes_and_reshaped_proofs(old: int, new: int) -> None:
    hashes = _distinct_leaf_hashes(2 * new + 2)
    tree = hashes[:new]
    proof = consistency_proof(old, tree)
    old_root, new_root = root_from_leaf_hashes(tree[:old]), root_from_leaf_hashes(tree)
    good = dict(old_size=old, new_size=new, old_root=old_root, new_root=new_root, proof=proof)
    for other in range(-1, new + 3):
        if other == old:
            continue
        if 0 < other <= new and consistency_proof(other, tree) != proof:
            real_old = root_from_leaf_hashes(tree[:other])
            with pytest.raises(VerificationError):
                verify_consistency(**{**good, "old_size": other, "old_root": real_old})
        with pytest.raises(VerificationError):
            verify_consistency(**{**good, "old_size": other})
    for other in range(-1, 2 * new + 3):
        if other == new:
            continue
        if old <= other <= len(hashes) and consistency_proof(old, hashes[:other]) != proof:
            real_new = root_from_leaf_hashes(hashes[:other])
            with pytest.raises(VerificationError):
                verify_consistency(**{**good, "new_size": other, "new_root": real_new})
        if other < old or len(_ref_subproof(old, hashes[:other], True)) != len(proof):
            with pytest.raises(VerificationError):
                verify_consistency(**{**good, "new_size": other})
    if old != new:
        with pytest.raises(VerificationError):
            verify_consistency(**{**good, "old_root": new_root, "new_root": old_root})
    extra = leaf_hash(b"extra")
    reshaped = [[*proof, extra], [*proof, old_root], [*proof, new_root], [extra, *proof], [old_root, *proof]]
    reshaped += [[new_root, *proof], [*proof, b""], [b"", *proof], []]
    if proof:
        reshaped += [proof[:-1], proof[1:], [*proof, proof[-1]], [proof[0], *proof], proof[::-1]]
    for bad in reshaped:
        if bad != proof:
            with pytest.raises(VerificationError):
                verify_consistency(**{**good, "proof": bad})


def test_consistency_edge_sizes_are_defined() -> None:
    tree = _distinct_leaf_hashes(5)
    r5 = root_from_leaf_hashes(tree)
    # The empty tree is a prefix of everything, provided its root really is SHA-256("").
    assert consistency_proof(0, tree) == []
    verify_consistency(old_size=0, new_size=5, old_root=EMPTY_ROOT_HASH, new_root=r5, proof=[])
    verify_consistency(old_size=0, new_size=0, old_root=EMPTY_ROOT_HASH, new_root=EMPTY_ROOT_HASH, proof=[])
    with pytest.raises(VerificationError):
        verify_consistency(old_size=0, new_size=5, old_root=r5, new_root=r5, proof=[])
    with pytest.raises(VerificationError):
        verify_consistency(old_size=0, new_size=5, old_root=EMPTY_ROOT_HASH, new_root=r5, proof=[r5])
    with pytest.raises(VerificationError):
        verify_consistency(old_size=0, new_size=0, old_root=EMPTY_ROOT_HASH, new_root=r5, proof=[])
    # Same size: empty proof and equal roots.
    assert consistency_proof(5, tree) == []
    verify_consistency(old_size=5, new_size=5, old_root=r5, new_root=r5, proof=[])
    with pytest.raises(VerificationError):
        verify_consistency(old_size=5, new_size=5, old_root=r5, new_root=r5, proof=[r5])
    # Shrinking is never consistent.
    with pytest.raises(VerificationError):
        verify_consistency(old_size=5, new_size=4, old_root=r5, new_root=r5, proof=[])


@pytest.mark.parametrize("bad", [b"", b"WrongLeaf", b"\x00" * 31, b"\x00" * 33])
def test_wrong_size_hashes_fail_even_where_no_hashing_happens(bad: bytes) -> None:
    # Size 1 with an empty proof, and equal sizes, compare the inputs directly: only the length check stops these.
    with pytest.raises(VerificationError):
        verify_inclusion(leaf_hash=bad, index=0, tree_size=1, proof=[], root=bad)
    with pytest.raises(VerificationError):
        verify_consistency(old_size=3, new_size=3, old_root=bad, new_root=bad, proof=[])


def test_inclusion_in_empty_tree_fails() -> None:
    with pytest.raises(VerificationError):
        verify_inclusion(leaf_hash=EMPTY_ROOT_HASH, index=0, tree_size=0, proof=[], root=EMPTY_ROOT_HASH)


@pytest.mark.parametrize(
    "change",
    [
        {"proof": None},
        {"proof": "ab" * 32},
        {"proof": b"\x00" * 32},
        {"proof": [None]},
        {"proof": ["ab" * 32]},
        {"proof": [b"\x00" * 31]},
        {"root": None},
        {"root": "ab" * 32},
        {"root": b"\x00" * 33},
        {"leaf_hash": b""},
        {"leaf_hash": 7},
        {"index": -1},
        {"index": 1.0},
        {"index": "1"},
        {"index": True},
        {"tree_size": None},
        {"tree_size": -3},
        {"tree_size": 3.0},
    ],
    ids=repr,
)
def test_malformed_inclusion_inputs_raise_verification_error_only(change: dict) -> None:
    tree = _distinct_leaf_hashes(3)
    good = dict(leaf_hash=tree[1], index=1, tree_size=3, proof=inclusion_proof(1, tree), root=_ref_mth(tree))
    verify_inclusion(**good)
    with pytest.raises(VerificationError):
        verify_inclusion(**{**good, **change})


@pytest.mark.parametrize(
    "change",
    [
        {"proof": None},
        {"proof": [1, 2]},
        {"old_root": None},
        {"new_root": b"short"},
        {"old_size": -1},
        {"old_size": 2.0},
        {"new_size": "5"},
        {"new_size": False},
    ],
    ids=repr,
)
def test_malformed_consistency_inputs_raise_verification_error_only(change: dict) -> None:
    tree = _distinct_leaf_hashes(5)
    good = dict(
        old_size=2,
        new_size=5,
        old_root=_ref_mth(tree[:2]),
        new_root=_ref_mth(tree),
        proof=consistency_proof(2, tree),
    )
    verify_consistency(**good)
    with pytest.raises(VerificationError):
        verify_consistency(**{**good, **change})


def test_error_message_names_expected_and_calculated_root() -> None:
    tree = _distinct_leaf_hashes(6)
    wrong_root = leaf_hash(b"not the root")
    with pytest.raises(VerificationError) as info:
        verify_inclusion(leaf_hash=tree[4], index=4, tree_size=6, proof=inclusion_proof(4, tree), root=wrong_root)
    assert wrong_root.hex() in str(info.value)
    assert _ref_mth(tree).hex() in str(info.value)


def test_verifiers_take_keyword_arguments_only() -> None:
    with pytest.raises(TypeError):
        verify_inclusion(ROOTS[1], 0, 1, [], ROOTS[1])  # type: ignore[misc]
    with pytest.raises(TypeError):
        verify_consistency(1, 1, ROOTS[1], ROOTS[1], [])  # type: ignore[misc]


def test_generators_reject_impossible_arguments() -> None:
    tree = _distinct_leaf_hashes(4)
    for bad in (-1, 4, 5):
        with pytest.raises(ValueError):
            inclusion_proof(bad, tree)
    with pytest.raises(ValueError):
        inclusion_proof(0, [])
    for bad in (-1, 5):
        with pytest.raises(ValueError):
            consistency_proof(bad, tree)


# -------------------------------------------------------------------------------------------- properties

# Draw the size first so that large trees (up to ~200 leaves) are as likely as small ones.
_trees = st.integers(1, 200).flatmap(lambda n: st.lists(st.binary(max_size=12), min_size=n, max_size=n))
_property = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_property
@given(leaves=_trees)
def test_every_generated_proof_verifies(leaves: list[bytes]) -> None:
    hashes = [leaf_hash(d) for d in leaves]
    n = len(hashes)
    roots = [root_from_leaf_hashes(hashes[:m]) for m in range(n + 1)]
    assert roots[n] == root_hash(leaves) == _ref_mth(hashes)
    for i in range(n):
        verify_inclusion(leaf_hash=hashes[i], index=i, tree_size=n, proof=inclusion_proof(i, hashes), root=roots[n])
    for m in range(n + 1):
        verify_consistency(
            old_size=m, new_size=n, old_root=roots[m], new_root=roots[n], proof=consistency_proof(m, hashes)
        )


@_property
@given(leaves=_trees, data=st.data())
def test_changing_one_leaf_changes_the_root_and_breaks_its_proofs(leaves: list[bytes], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(leaves) - 1), label="index")
    replacement = data.draw(st.binary(max_size=12).filter(lambda b: b != leaves[i]), label="replacement")
    tampered = [*leaves]
    tampered[i] = replacement
    original_root = root_hash(leaves)
    assert root_hash(tampered) != original_root
    hashes = [leaf_hash(d) for d in tampered]
    with pytest.raises(VerificationError):
        verify_inclusion(
            leaf_hash=hashes[i],
            index=i,
            tree_size=len(leaves),
            proof=inclusion_proof(i, hashes),
            root=original_root,
        )


@_property
@given(leaves=_trees, data=st.data())
def test_merkle_log_matches_pure_functions(leaves: list[bytes], data: st.DataObject) -> None:
    log = MerkleLog()
    for data_item in leaves:
        log.append(data_item)
    hashes = [leaf_hash(d) for d in leaves]
    assert list(log.leaf_hashes) == hashes
    assert log.root() == root_from_leaf_hashes(hashes)
    assert MerkleLog(hashes).root() == log.root()
    new = data.draw(st.integers(1, len(leaves)), label="new_size")
    old = data.draw(st.integers(0, new), label="old_size")
    index = data.draw(st.integers(0, new - 1), label="index")
    assert log.root(new) == root_from_leaf_hashes(hashes[:new])
    assert log.inclusion_proof(index, new) == inclusion_proof(index, hashes[:new])
    assert log.consistency_proof(old, new) == consistency_proof(old, hashes[:new])
    assert log.consistency_proof(old) == consistency_proof(old, hashes)


def test_merkle_log_is_append_only() -> None:
    log = MerkleLog()
    log.append(b"a")
    with pytest.raises(TypeError):
        log.leaf_hashes[0] = leaf_hash(b"b")  # type: ignore[index]
    with pytest.raises(ValueError):
        log.append_leaf_hash(b"too short")
    with pytest.raises(ValueError):
        log.root(2)


# -------------------------------------------------------------------------------------------- checkpoints

# The example body of the C2SP tlog-checkpoint specification (c2sp.org/tlog-checkpoint).
C2SP_EXAMPLE_BODY = b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _checkpoint() -> Checkpoint:
    return Checkpoint(origin="wearfed.example/audit", tree_size=8, root_hash=ROOTS[8])


def test_checkpoint_body_is_c2sp_text() -> None:
    cp = _checkpoint()
    assert cp.body() == b"wearfed.example/audit\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n"
    assert Checkpoint.from_body(cp.body()) == cp
    example = Checkpoint.from_body(C2SP_EXAMPLE_BODY)
    assert (example.origin, example.tree_size) == ("example.com/behind-the-sofa", 20852163)
    assert example.body() == C2SP_EXAMPLE_BODY


@pytest.mark.parametrize(
    "body",
    [
        b"origin\n08\n" + base64.b64encode(ROOTS[8]) + b"\n",
        b"origin\n8\n" + base64.b64encode(ROOTS[8]),
        b"origin\n8\n" + base64.b64encode(ROOTS[8]) + b"\nextension\n",
        b"origin\n-8\n" + base64.b64encode(ROOTS[8]) + b"\n",
        b"origin\n8\n" + base64.b64encode(ROOTS[8][:31]) + b"\n",
        b"origin\n8\nnot base64!\n",
        b"\n8\n" + base64.b64encode(ROOTS[8]) + b"\n",
        b"\xff\n8\n" + base64.b64encode(ROOTS[8]) + b"\n",
    ],
)
def test_checkpoint_parser_is_strict(body: bytes) -> None:
    with pytest.raises(SchemaError):
        Checkpoint.from_body(body)


@pytest.mark.parametrize(
    "fields",
    [
        {"origin": ""},
        {"origin": "two\nlines"},
        {"origin": "has space"},
        {"origin": "a+b"},
        {"tree_size": -1},
        {"tree_size": True},
        {"root_hash": b"\x00" * 31},
    ],
    ids=repr,
)
def test_checkpoint_rejects_unframeable_fields(fields: dict) -> None:
    base = dict(origin="wearfed.example/audit", tree_size=8, root_hash=ROOTS[8])
    with pytest.raises(SchemaError):
        Checkpoint(**{**base, **fields})


def test_checkpoint_sign_verify_roundtrip(key: Ed25519PrivateKey) -> None:
    cp = _checkpoint()
    signature = sign_checkpoint(cp, key)
    assert len(signature) == 64
    verify_checkpoint(cp, signature, key.public_key())


def test_checkpoint_rejects_wrong_key_and_changed_fields(key: Ed25519PrivateKey) -> None:
    cp = _checkpoint()
    signature = sign_checkpoint(cp, key)
    with pytest.raises(VerificationError):
        verify_checkpoint(cp, signature, Ed25519PrivateKey.generate().public_key())
    for changed in (
        Checkpoint(origin=cp.origin, tree_size=7, root_hash=cp.root_hash),
        Checkpoint(origin=cp.origin, tree_size=cp.tree_size, root_hash=ROOTS[7]),
        Checkpoint(origin="wearfed.example/other", tree_size=cp.tree_size, root_hash=cp.root_hash),
    ):
        with pytest.raises(VerificationError):
            verify_checkpoint(changed, signature, key.public_key())
    for pos in range(32):
        changed = Checkpoint(origin=cp.origin, tree_size=cp.tree_size, root_hash=_flip(cp.root_hash, pos))
        with pytest.raises(VerificationError):
            verify_checkpoint(changed, signature, key.public_key())


def test_checkpoint_rejects_tampered_signature(key: Ed25519PrivateKey) -> None:
    cp = _checkpoint()
    signature = sign_checkpoint(cp, key)
    for pos in range(len(signature)):
        with pytest.raises(VerificationError):
            verify_checkpoint(cp, _flip(signature, pos), key.public_key())
    for bad in (signature[:-1], signature + b"\x00", b"", None, signature.hex()):
        with pytest.raises(VerificationError):
            verify_checkpoint(cp, bad, key.public_key())  # type: ignore[arg-type]
    with pytest.raises(VerificationError):
        verify_checkpoint(cp, signature, key)  # type: ignore[arg-type]


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=40), max_size=70))
def test_persisted_frontier_extends_to_the_same_roots(leaves: list[bytes]) -> None:
    """The audit ledger stores only the frontier between appends; its root must equal MTH at every size."""
    from federation.merkle import extend_frontier, frontier_root

    frontier: list[bytes] = []
    assert frontier_root(frontier) == EMPTY_ROOT_HASH
    for size, data in enumerate(leaves):
        frontier = extend_frontier(frontier, size, leaf_hash(data))
        assert frontier_root(frontier) == root_hash(leaves[: size + 1])


def test_frontier_of_the_wrong_size_is_refused() -> None:
    from federation.merkle import extend_frontier

    with pytest.raises(ValueError, match="cannot belong"):
        extend_frontier([leaf_hash(b"a")], 3, leaf_hash(b"b"))  # a tree of 3 leaves has two perfect subtrees
    with pytest.raises(ValueError, match="cannot belong"):
        extend_frontier([], 3, leaf_hash(b"b"))
    with pytest.raises(VerificationError):
        extend_frontier([], 0, b"short")
