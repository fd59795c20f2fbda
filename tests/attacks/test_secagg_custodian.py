"""Attack: whoever holds the CKKS secret key (a custodian, or a thief of the unsealed key) decrypts one participant's
stored ciphertext, or the sum of fewer than all of a round's survivors, to read an update.

Before secure aggregation (issue 13) the secret key holder read any single update to about 1e-7 (3.2e-7 in the
issue's reproduction). Now every update is masked before encryption (federation.secagg): what decrypts is uniform
modulo M = 2^40 and uncorrelated with the update, even after the cloud has rebuilt the participant's self-mask.
The test also runs the attacker's code on an unmasked encryption of the same update, so it shows both sides and
would fail if masking were switched off.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from scipy import stats
from sqlalchemy import select

from cloud.db import SecAggMessage, SecAggRound, Update
from federation import ckks, secagg, shamir
from tests.cloud.participants import FakeNode, open_round, random_delta, wait_state

P_UNIFORM = 1e-4  # a KS / chi-square test this far into the tail would call a uniform sample non-uniform


@pytest.fixture
def http(cloud):  # noqa: ANN001, ANN201
    with httpx.Client(base_url=cloud.url, timeout=30) as client:
        yield client


def looks_uniform(residues: np.ndarray) -> bool:
    """KS against U[0, 1) of r / M, and chi-square of the top 4 bits (16 equal cells)."""
    r = np.asarray(residues, dtype=np.int64)
    ks = stats.kstest(r / secagg.MODULUS, "uniform").pvalue
    chi = stats.chisquare(np.bincount(r >> (secagg.MODULUS.bit_length() - 5), minlength=16)).pvalue
    return ks > P_UNIFORM and chi > P_UNIFORM


def what_the_attacker_reads(secret, blob: bytes) -> np.ndarray:  # noqa: ANN001
    """Decrypt with the secret key and read the result as a (weighted) update, as the attacker would."""
    decoded = ckks.decrypt(secret, blob)
    return secagg.dequantise(decoded) if ckks.encoding_of(blob) == ckks.RESIDUES else decoded


def test_secret_key_holder_reads_noise_from_one_update_or_a_partial_sum(cloud, http: httpx.Client) -> None:  # noqa: ANN001
    nodes = [FakeNode(http, f"gw-{i}") for i in range(1, 6)]
    for n in nodes:
        assert n.enroll().status_code == 201
    counts = [120, 340, 560, 780, 900]
    deltas = [random_delta(40 + i) for i in range(5)]
    truth = {n.id: ckks.weighted_update(d, c) for n, d, c in zip(nodes, deltas, counts, strict=True)}
    rid = open_round(http, quorum=3, deadline_s=600)
    for n, d, c in zip(nodes, deltas, counts, strict=True):
        assert n.submit(rid, n.submission(rid, d, n_samples=c)).status_code == 200
    assert wait_state(http, rid, ("completed", "failed"), timeout=120)["state"] == "completed"

    # the attacker: the secret context (the dev custodian's file here; a custodian's unsealed key in production)
    secret = ckks.load_context((cloud.state_dir / "custodian-INSECURE-dev" / "secret-context.bin").read_bytes())
    public = ckks.load_context(http.get("/v1/context").content)
    with cloud.units.store.sessions() as s:
        stored = {u.participant: u.ciphertext for u in s.scalars(select(Update).where(Update.round_id == rid))}
        sa = s.get(SecAggRound, rid)
        unmask = {m.participant: m.doc for m in s.scalars(select(SecAggMessage).where(
            SecAggMessage.round_id == rid, SecAggMessage.phase == "unmask"))}
        u1 = list(sa.u1)

    victim = nodes[2].id
    # BEFORE (what a node sent until this change): the same update, CKKS-encrypted without masking
    before = what_the_attacker_reads(secret, ckks.encrypt(public, truth[victim]))
    assert np.max(np.abs(before - truth[victim])) < 1e-4
    assert np.corrcoef(before, truth[victim])[0, 1] > 0.9999
    assert not looks_uniform(secagg.quantise(truth[victim]))  # the uniformity test sees an unmasked update

    # AFTER: one participant's stored ciphertext
    residues = ckks.decrypt(secret, stored[victim])
    read = secagg.dequantise(residues)
    assert looks_uniform(residues)
    assert abs(np.corrcoef(read, truth[victim])[0, 1]) < 0.1
    assert np.max(np.abs(read - truth[victim])) > 1e4  # off by the size of the modulus, not by 1e-7

    # AFTER: the sum of all survivors but one (the custodian adds the ciphertexts itself)
    partial_ids = [n.id for n in nodes if n.id != nodes[4].id]
    partial = ckks.sum_encrypted(secret, [stored[p] for p in partial_ids])
    partial_residues = ckks.decrypt(secret, partial)
    assert looks_uniform(partial_residues)
    assert abs(np.corrcoef(secagg.dequantise(partial_residues), sum(truth[p] for p in partial_ids))[0, 1]) < 0.1

    # AFTER, even with the self-mask the cloud rebuilt from the survivors' shares: pairwise masks still hide it
    t = secagg.threshold(len(u1))
    shares = {u1.index(h) + 1: bytes.fromhex(doc["b_shares"][victim]) for h, doc in unmask.items()
              if victim in doc["b_shares"]}
    b = shamir.combine(shares, threshold=t)
    without_self_mask = (residues - secagg.prg(b, residues.size)) % secagg.MODULUS
    assert looks_uniform(without_self_mask)
    assert abs(np.corrcoef(secagg.dequantise(without_self_mask), truth[victim])[0, 1]) < 0.1

    # and the full sum of the survivors is exactly what FedAvg needed (nothing else was revealed)
    full = ckks.decrypt(secret, ckks.sum_encrypted(secret, list(stored.values())))
    assert looks_uniform(full)  # still masked by the survivors' self-masks until the cloud removes them
