"""The custodian's own checks of region aggregates (real Ed25519, real CKKS bytes): it refuses to decrypt when a
region statement is not signed by the region's key, is about another round or other bytes, or when the ledger's
region rows and the statements disagree. (The honest path, with the log's inclusion proofs, runs in
tests/cloud/test_regions.py.)"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.custodian import Custodian, CustodianRefusal, LedgerRegionSum, LedgerUpdate
from federation import region
from federation.signing import public_key_b64, sign

ROUND = 7


def _row(pid: str, key: Ed25519PrivateKey, region_id: str) -> LedgerUpdate:
    env = {"round": ROUND, "participant": pid, "n_samples": 10, "base_model_version": 0, "region": region_id,
           "ciphertext_sha256": hashlib.sha256(pid.encode()).hexdigest(), "idempotency_key": uuid.uuid4().hex,
           "dp": {}}
    return LedgerUpdate(participant=pid, public_key=public_key_b64(key), envelope=env, signature=sign(key, env),
                        ciphertext=b"", region=region_id)


def _sum(rows: list[LedgerUpdate], key: Ed25519PrivateKey, region_id: str, *, round_id: int = ROUND,
         aggregate: bytes = b"sum of them") -> LedgerRegionSum:
    doc = region.statement(round_id=round_id, region=region_id, aggregate=aggregate,
                           contributors={u.participant: u.envelope["ciphertext_sha256"] for u in rows})
    return LedgerRegionSum(region=region_id, public_key=public_key_b64(key), statement=doc,
                           signature=region.sign_statement(key, doc), aggregate=aggregate)


@pytest.fixture
def ledger() -> tuple[list[LedgerUpdate], Ed25519PrivateKey]:
    rows = [_row(f"h-{i}", Ed25519PrivateKey.generate(), "r-1") for i in range(3)]
    return rows, Ed25519PrivateKey.generate()


def test_an_honest_statement_passes(ledger) -> None:  # noqa: ANN001
    rows, key = ledger
    Custodian._check_region_sums(ROUND, rows, [_sum(rows, key, "r-1")])


@pytest.mark.parametrize(("tamper", "reason"), [
    ("other_key", "not signed by its enrolled key"),
    ("other_round", "not about this round's aggregate"),
    ("other_bytes", "not about this round's aggregate"),
    ("row_unlisted", "name a region whose aggregate is not offered"),
    ("listed_twice", "are in two region aggregates"),
    ("other_digest", "who signed"),
    ("row_of_direct", "lists"),
])
def test_a_statement_that_does_not_match_the_ledger_is_refused(ledger, tamper: str, reason: str) -> None:  # noqa: ANN001
    rows, key = ledger
    sums = [_sum(rows, key, "r-1")]
    if tamper == "other_key":
        sums = [dataclasses.replace(sums[0], public_key=public_key_b64(Ed25519PrivateKey.generate()))]
    elif tamper == "other_round":
        sums = [_sum(rows, key, "r-1", round_id=ROUND + 1)]
    elif tamper == "other_bytes":
        sums = [dataclasses.replace(sums[0], aggregate=b"other bytes")]
    elif tamper == "row_unlisted":  # a region row no statement lists (its update would be counted nowhere)
        sums = [_sum(rows[:2], key, "r-1")]
    elif tamper == "listed_twice":
        sums = [_sum(rows[:2], key, "r-1"), _sum(rows[1:], key, "r-1", aggregate=b"second")]
    elif tamper == "other_digest":  # the statement names a ciphertext its participant did not sign
        doc = {**sums[0].statement, "contributors": {**sums[0].statement["contributors"], "h-0": "0" * 64}}
        sums = [dataclasses.replace(sums[0], statement=doc, signature=region.sign_statement(key, doc))]
    elif tamper == "row_of_direct":  # the statement lists a participant whose row says it came directly
        rows = [dataclasses.replace(rows[0], region=None), *rows[1:]]
    with pytest.raises(CustodianRefusal, match=reason):
        Custodian._check_region_sums(ROUND, rows, sums)
