"""Defect 9, custodian side (issue 14): the custodian decrypts only what the audit log committed.

The attack: whoever controls the aggregator's database replaces gw-2's and gw-3's stored updates with gw-1's
ciphertext, re-signs their envelopes with keys of their own, swaps those keys into ``participants`` and stores the sum
3 x gw-1 as the round's aggregate. Every check the custodian made before the state binding passes (signatures verify
under the swapped keys, each ciphertext hash was accepted in the log, the sum is rebuilt exactly), and decryption
would reveal gw-1's update alone. With inclusion proofs the custodian compares every row with what the signed log
committed and refuses.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from cloud import inclusion
from cloud.custodian import Custodian, CustodianRefusal, LedgerUpdate
from cloud.db import Participant, Round, Update
from federation import ckks
from federation.signing import public_key_b64, sign, verify
from tests.cloud.participants import ADMIN, FakeNode, create_user, open_round, random_delta, wait_state


def _rows(store, round_id: int) -> tuple[list[LedgerUpdate], Round]:  # noqa: ANN001
    with store.read() as s:
        keys = {p.id: p.public_key for p in s.scalars(select(Participant))}
        ups = s.scalars(select(Update).where(Update.round_id == round_id).order_by(Update.participant)).all()
        return ([LedgerUpdate(participant=u.participant, public_key=keys[u.participant], envelope=u.envelope,
                              signature=u.signature, ciphertext=u.ciphertext) for u in ups], s.get(Round, round_id))


def _isolating_rows(rows: list[LedgerUpdate]) -> list[LedgerUpdate]:
    """gw-2 and gw-3 replaced by gw-1's ciphertext, their envelopes re-signed by the attacker's keys."""
    out = [rows[0]]
    for r in rows[1:]:
        mallory = Ed25519PrivateKey.generate()
        env = {**r.envelope, "ciphertext_sha256": rows[0].envelope["ciphertext_sha256"]}
        out.append(LedgerUpdate(participant=r.participant, public_key=public_key_b64(mallory), envelope=env,
                                signature=sign(mallory, env), ciphertext=rows[0].ciphertext))
    return out


def _checks_before_the_binding_pass(rows: list[LedgerUpdate], accepted: set[str], aggregate: bytes, ctx) -> bool:  # noqa: ANN001
    """The custodian's decision procedure before the state binding (signature under the stored key, hash as signed,
    hash accepted in the log, sum rebuilt): True if it would have decrypted."""
    for u in rows:
        digest = hashlib.sha256(u.ciphertext).hexdigest()
        verify(u.public_key, u.envelope, u.signature)
        if u.envelope["ciphertext_sha256"] != digest or digest not in accepted:
            return False
    return ckks.sum_encrypted(ctx, [u.ciphertext for u in rows]) == aggregate


def test_custodian_decrypts_only_what_the_log_committed(cloud, http: httpx.Client,  # noqa: ANN001
                                                         nodes: list[FakeNode]) -> None:
    rid = open_round(http, quorum=3)
    deltas = [random_delta(i) for i in range(3)]
    for n, d in zip(nodes, deltas, strict=True):
        assert n.submit(rid, n.submission(rid, d, n_samples=10)).status_code == 200
    assert wait_state(http, rid, ("completed", "failed"))["state"] == "completed"  # the honest path, end to end

    units = cloud.units
    custodian: Custodian = units.keys.custodian
    ctx = units.keys.public_context
    rows, rnd = _rows(units.store, rid)
    evidence = inclusion.gather(units.store, units.log, rid)
    log_key = units.store.audit.public_key_b64
    decrypt = lambda aggregate, ups, **kw: custodian.decrypt_aggregate(  # noqa: E731
        aggregate, updates=ups, **{"quorum": 3, "round_id": rid, "evidence": evidence, "log_key": log_key, **kw})
    total = ckks.sum_encrypted(ctx, [r.ciphertext for r in rows])
    unmasked, _ = units.secagg.unmask(rid, decrypt(total, rows))  # the decrypted sum is masked (cloud.secagg)
    np.testing.assert_allclose(unmasked, sum(ckks.weighted_update(d, 10) for d in deltas), atol=1e-4)

    # the attack of the module docstring: passes every check of before, refused now
    attack = _isolating_rows(rows)
    three_gw1 = ckks.sum_encrypted(ctx, [r.ciphertext for r in attack])
    accepted = {r.envelope["ciphertext_sha256"] for r in rows}
    assert _checks_before_the_binding_pass(attack, accepted, three_gw1, ctx)
    with pytest.raises(CustodianRefusal, match="update of gw-2 differs from the audit log .* column envelope"):
        decrypt(three_gw1, attack)

    # each single substitution is named
    mallory = Ed25519PrivateKey.generate()  # gw-3's own envelope, re-signed under a key swapped into the database
    swapped_key = [rows[0], rows[1], replace(rows[2], public_key=public_key_b64(mallory),
                                             signature=sign(mallory, rows[2].envelope))]
    with pytest.raises(CustodianRefusal, match="column signature"):
        decrypt(total, swapped_key)
    # one left out, quorum lowered to match: below the floor of 3 distinct contributors before the log is consulted
    with pytest.raises(CustodianRefusal, match="contributors|quorum is 3"):
        decrypt(ckks.sum_encrypted(ctx, [r.ciphertext for r in rows[:2]]), rows[:2], quorum=2)
    with pytest.raises(CustodianRefusal, match="quorum 3, the database says 2"):
        decrypt(total, rows, quorum=2)
    with pytest.raises(CustodianRefusal, match="does not verify under the log key"):
        decrypt(total, rows, log_key=public_key_b64(Ed25519PrivateKey.generate()))
    bad_path = dict(evidence.updates)
    bad_path["gw-1"] = replace(bad_path["gw-1"], proof=[("00" * 32)] + bad_path["gw-1"].proof[1:])
    with pytest.raises(CustodianRefusal, match="gw-1 .* not included"):
        decrypt(total, rows, evidence=replace(evidence, updates=bad_path))
    forged_entry = replace(evidence.enrollments["gw-3"],
                           rows=[{**evidence.enrollments["gw-3"].rows[0],
                                  "row": {**evidence.enrollments["gw-3"].rows[0]["row"],
                                          "public_key": public_key_b64(mallory)}}])
    with pytest.raises(CustodianRefusal, match="enrollment of gw-3 .* not included"):
        decrypt(total, rows, evidence=replace(evidence, enrollments={**evidence.enrollments,
                                                                     "gw-3": forged_entry}))
    # the checks that were there before still hold
    with pytest.raises(CustodianRefusal, match="not the sum"):
        decrypt(rows[0].ciphertext, rows)
    with pytest.raises(CustodianRefusal, match="distinct"):
        decrypt(total, [rows[0], rows[0], rows[1]])
    with pytest.raises(CustodianRefusal, match="quorum"):
        decrypt(total, rows, quorum=4)
    assert rnd.aggregate == total  # nothing above altered the stored round


def test_sealed_server_refuses_rows_edited_behind_the_log(tmp_path: Path) -> None:
    """A real `wearfed cloud serve` with a sealed custodian: the round waits in decrypting, the database is edited
    (the isolating attack, in SQL), three custodians unseal: the round fails, the refusal is audited."""
    from sqlalchemy import update

    from cloud.engine import make_engine
    from tests.cloud.server import ServerProcess
    from tests.cloud.test_custody import _init

    state, db_url = tmp_path / "state", f"sqlite:///{tmp_path / 'cloud.db'}"
    shares = _init(state)
    server = ServerProcess(db_url=db_url, state_dir=state, log=tmp_path / "cloud.log", dev=False)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            nodes = [FakeNode(http, f"gw-{i}") for i in (1, 2, 3)]
            for n in nodes:
                assert n.enroll().status_code == 201
            rid = open_round(http, quorum=3)
            for i, n in enumerate(nodes):
                assert n.submit(rid, n.submission(rid, random_delta(i), n_samples=10)).status_code == 200
            wait_state(http, rid, ("decrypting",))
            ctx = ckks.load_context(http.get("/v1/context").content)
            engine = make_engine(db_url)
            with engine.begin() as conn:  # the attacker: plain SQL on the aggregator's database
                ups = conn.execute(select(Update.__table__).where(Update.round_id == rid)
                                   .order_by(Update.participant)).mappings().all()
                rows = [LedgerUpdate(participant=u["participant"], public_key="", envelope=u["envelope"],
                                     signature=u["signature"], ciphertext=u["ciphertext"]) for u in ups]
                attack = _isolating_rows(rows)
                for a in attack[1:]:
                    conn.execute(update(Update.__table__).where(Update.round_id == rid,
                                                                Update.participant == a.participant)
                                 .values(ciphertext=a.ciphertext, envelope=a.envelope, signature=a.signature,
                                         ciphertext_sha256=a.envelope["ciphertext_sha256"]))
                    conn.execute(update(Participant.__table__).where(Participant.id == a.participant)
                                 .values(public_key=a.public_key))
                conn.execute(update(Round.__table__).where(Round.id == rid).values(
                    aggregate=ckks.sum_encrypted(ctx, [a.ciphertext for a in attack])))
            engine.dispose()
            for share in shares[:3]:
                assert http.post("/v1/custodian/unseal", json={"share": share}, headers=ADMIN).status_code == 200
            report = wait_state(http, rid, ("completed", "failed"), timeout=120)
            compliance = create_user(http, "carol", "compliance_officer")
            entries = http.get("/v1/audit/entries", headers=compliance, params={"limit": 10_000}).json()
    finally:
        server.stop()
    assert report["state"] == "failed", report
    assert "differs from the audit log" in report["failure_reason"], report["failure_reason"]
    refusals = [e for e in entries if e["kind"] == "custodian.refused"]
    assert len(refusals) == 1 and "gw-2" in refusals[0]["detail"]["reason"]
    assert not [e for e in entries if e["kind"] == "aggregate.decrypted"]
