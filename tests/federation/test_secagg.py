"""Secure aggregation math (federation.secagg) in memory: the protocol's rounds between real sessions, dropouts at
every point up to the budget, the graph's guarantees for every round size, and every check a participant makes
before it answers."""

from __future__ import annotations

import base64
import itertools
from dataclasses import dataclass, field

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from federation import ckks, secagg
from federation.signing import public_key_b64

ROUND = 7


@dataclass
class Federation:
    """n sessions and what a (honest) cloud would route between them."""

    n: int
    size: int = 40
    ids: list[str] = field(init=False)
    keys: dict = field(init=False)
    sessions: dict = field(init=False)
    adverts: list = field(init=False)

    def __post_init__(self) -> None:
        self.ids = [f"p{i:02d}" for i in range(self.n)]
        self.keys = {p: Ed25519PrivateKey.generate() for p in self.ids}
        self.sessions = {p: secagg.ParticipantSession(round_id=ROUND, participant=p) for p in self.ids}
        self.adverts = [{"participant": p, "identity_key": public_key_b64(self.keys[p]),
                         **self.sessions[p].advert(self.keys[p])} for p in self.ids]

    def view(self, **extra: object) -> dict:
        return {"round": ROUND, "adverts": self.adverts, **extra}

    def run(self, *, before_share=(), after_share=(), after_input=(), after_consistency=(), seed: int = 0):
        docs = {p: self.sessions[p].shares(self.view(), self.keys[p])["doc"] for p in self.ids if p not in before_share}
        u2 = sorted(docs)
        rng = np.random.default_rng(seed)
        updates = {p: rng.normal(0, 100, self.size) for p in u2}
        ys = {p: self.sessions[p].mask(self.view(u2=u2, inbox=self.inbox(docs, p)), updates[p])
              for p in u2 if p not in after_share}
        u3 = sorted(ys)
        signed = [{"participant": p, "signature": self.sessions[p].consistency(self.view(u2=u2, u3=u3),
                                                                               self.keys[p])["signature"]}
                  for p in u3 if p not in after_input]
        responses = {p: self.sessions[p].unmask(self.view(u2=u2, u3=u3, consistency=signed), self.keys[p])["doc"]
                     for p in u3 if p not in after_input and p not in after_consistency}
        rnd = secagg.Round(ROUND, secagg.verify_adverts(ROUND, self.adverts))
        total, summary = secagg.unmask_sum(ckks.sum_residues_plain([ys[p] for p in u3]), rnd=rnd, u2=u2, u3=u3,
                                           responses=responses)
        return total, {p: updates[p] for p in u3}, ys, responses, summary

    @staticmethod
    def inbox(docs: dict, recipient: str) -> dict:
        return {s: d["shares"][recipient] for s, d in docs.items() if recipient in d["shares"]}


def assert_exact(total: np.ndarray, updates: dict) -> None:
    want = ckks.sum_residues_plain([secagg.quantise(u) for u in updates.values()])
    np.testing.assert_array_equal(total, want)
    np.testing.assert_allclose(secagg.dequantise(total), sum(updates.values()), atol=len(updates) * 2.0**-20)


@pytest.mark.parametrize("n", [2, 3, 4, 6])
def test_no_dropout_recovers_the_exact_sum(n: int) -> None:
    total, updates, _ys, _r, summary = Federation(n).run()
    assert_exact(total, updates)
    assert summary["dropped_masks_removed"] == []


def test_six_participants_two_drop_after_sharing() -> None:
    total, updates, _ys, responses, summary = Federation(6).run(after_share=("p01", "p04"))
    assert sorted(updates) == ["p00", "p02", "p03", "p05"]
    assert_exact(total, updates)
    assert summary["dropped_masks_removed"] == ["p01", "p04"]
    for doc in responses.values():  # never both shares of one owner; never one's own mask key
        assert not set(doc["b_shares"]) & set(doc["sk_shares"])
        assert doc["participant"] not in doc["sk_shares"]


@pytest.mark.parametrize("where", ["before_share", "after_share", "after_input", "after_consistency"])
def test_the_budget_of_dropouts_at_any_point_is_recovered(where: str) -> None:
    fed = Federation(9)  # d = 3
    dropped = ("p00", "p04", "p08")
    total, updates, *_ = fed.run(**{where: dropped})
    assert_exact(total, updates)


def test_dropouts_spread_over_every_phase_at_the_largest_round() -> None:
    fed = Federation(secagg.MAX_PARTICIPANTS, size=16)  # d = 21: 5 + 6 + 5 + 5
    ids = fed.ids
    total, updates, *_ = fed.run(before_share=tuple(ids[0:5]), after_share=tuple(ids[5:11]),
                                 after_input=tuple(ids[11:16]), after_consistency=tuple(ids[16:21]))
    assert len(updates) == 64 - 11
    assert_exact(total, updates)


def test_more_dropouts_than_the_budget_are_refused_by_the_participants() -> None:
    fed = Federation(6)  # d = 2: a third dropout makes participants refuse to go on
    with pytest.raises(secagg.SecAggError, match="at most 2 may"):
        fed.run(after_share=("p00", "p01", "p02"))


@pytest.mark.parametrize("n", range(2, secagg.MAX_PARTICIPANTS + 1))
def test_graph_guarantees_for_every_round_size(n: int) -> None:
    """For every n: degree 2d (or complete), symmetric; any d dropouts, including a whole ring neighbourhood (the
    adversarial pattern), leave every secret with t surviving holders and the survivors connected."""
    members = [f"m{i:02d}" for i in range(n)]
    graph = secagg.neighbours(members, b"\x07" * 32)
    k, t, d = secagg.degree(n), secagg.threshold(n), secagg.dropout_budget(n)
    assert all(len(v) == k for v in graph.values())
    assert all(p in graph[q] for p in graph for q in graph[p])
    assert k >= 2 * d and t == (k + 1) // 2 + 1 and 2 * t > k + 1
    ring = secagg._shuffled(members, b"\x07" * 32)
    patterns = [set(ring[:d]), set(ring[1 : 2 * d : 2])] + [set(c) for c in itertools.islice(
        itertools.combinations(members, d), 50)]
    for gone in patterns:
        alive = set(members) - gone
        for owner in members:
            holders = {owner, *graph[owner]} & alive
            assert len(holders) >= t, (n, owner, gone)
        seen, todo = set(), [next(iter(alive))]
        while todo:
            p = todo.pop()
            if p not in seen:
                seen.add(p)
                todo.extend(q for q in graph[p] if q in alive)
        assert seen == alive


@settings(max_examples=60, deadline=None)
@given(n=st.integers(4, secagg.MAX_PARTICIPANTS), data=st.data())
def test_random_dropouts_within_the_budget_always_recover(n: int, data: st.DataObject) -> None:
    members = [f"m{i:02d}" for i in range(n)]
    seed = data.draw(st.binary(min_size=32, max_size=32))
    graph = secagg.neighbours(members, seed)
    gone = set(data.draw(st.lists(st.sampled_from(members), max_size=secagg.dropout_budget(n), unique=True)))
    for owner in members:
        assert len(({owner, *graph[owner]}) - gone) >= secagg.threshold(n)


def test_a_masked_input_alone_is_uniform_and_uncorrelated_with_the_update() -> None:
    fed = Federation(4, size=4000)
    _total, updates, ys, *_ = fed.run()
    for p, y in ys.items():
        assert stats.kstest(y / secagg.MODULUS, "uniform").pvalue > 1e-4
        assert abs(np.corrcoef(y, updates[p])[0, 1]) < 0.1
    partial = ckks.sum_residues_plain([ys["p00"], ys["p01"], ys["p02"]])  # all but one survivor
    assert stats.kstest(partial / secagg.MODULUS, "uniform").pvalue > 1e-4


def test_prg_is_chacha20_of_the_full_seed() -> None:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    seed = bytes(range(32))
    raw = Cipher(algorithms.ChaCha20(seed, b"\x00" * 16), mode=None).encryptor().update(b"\x00" * 80)
    want = np.frombuffer(raw, dtype="<u8") % secagg.MODULUS
    np.testing.assert_array_equal(secagg.prg(seed, 10), want.astype(np.int64))
    flipped = bytes([seed[0]]) + seed[1:31] + bytes([seed[31] ^ 1])  # the last bit of the seed matters
    assert not np.array_equal(secagg.prg(flipped, 10), secagg.prg(seed, 10))
    assert stats.chisquare(np.bincount(secagg.prg(seed, 64_000) >> 34, minlength=64)).pvalue > 1e-4


def test_quantisation_range_and_precision() -> None:
    top = np.full(5, ckks.MAX_ABS_VALUE)
    parts = [secagg.quantise(top * (-1) ** i) for i in range(64)]
    np.testing.assert_array_equal(secagg.dequantise(ckks.sum_residues_plain(parts)), np.zeros(5))
    np.testing.assert_array_equal(secagg.dequantise(ckks.sum_residues_plain(parts[1:])), -top)
    worst = [secagg.quantise(top) for _ in range(64)]  # 64 x 2^13 = 2^19 < 2^39 / 2^19: no wrap
    np.testing.assert_allclose(secagg.dequantise(ckks.sum_residues_plain(worst)), top * 64)
    for bad in (np.array([np.nan]), np.array([np.inf]), np.array([ckks.MAX_ABS_VALUE * 1.001])):
        with pytest.raises(secagg.SecAggError):
            secagg.quantise(bad)


# -- what a participant refuses to do ---------------------------------------------------------------------
def _shared(n: int = 4) -> tuple[Federation, dict]:
    fed = Federation(n)
    return fed, {p: fed.sessions[p].shares(fed.view(), fed.keys[p])["doc"] for p in fed.ids}


def test_adverts_must_be_signed_by_the_identity_for_this_round() -> None:
    fed = Federation(3)
    forged = [dict(a) for a in fed.adverts]
    forged[1] = {**forged[1], "identity_key": public_key_b64(Ed25519PrivateKey.generate())}
    with pytest.raises(secagg.SecAggError, match="not signed"):
        fed.sessions["p00"].shares(fed.view(adverts=forged), fed.keys["p00"])
    other_round = secagg.ParticipantSession(round_id=ROUND + 1, participant="p01")
    replayed = [fed.adverts[0], {"participant": "p01", "identity_key": public_key_b64(fed.keys["p01"]),
                                 **other_round.advert(fed.keys["p01"])}, fed.adverts[2]]
    with pytest.raises(secagg.SecAggError, match="not a key advert of round"):
        fed.sessions["p00"].shares(fed.view(adverts=replayed), fed.keys["p00"])
    with pytest.raises(secagg.SecAggError, match="own advert"):
        fed.sessions["p00"].shares(fed.view(adverts=fed.adverts[1:]), fed.keys["p00"])
    with pytest.raises(secagg.SecAggError, match="two adverts"):
        fed.sessions["p00"].shares(fed.view(adverts=[*fed.adverts, fed.adverts[1]]), fed.keys["p00"])
    with pytest.raises(secagg.SecAggError, match="2..64"):
        fed.sessions["p00"].shares(fed.view(adverts=fed.adverts[:1]), fed.keys["p00"])


def test_low_order_x25519_keys_are_refused() -> None:
    """A malicious p01 advertises an all-zero mask key (a low-order point): the agreement is refused, not used."""
    fed = Federation(3)
    liar = fed.sessions["p01"]
    doc = {**fed.adverts[1]["advert"], "s_pk": base64.b64encode(b"\x00" * 32).decode()}
    fed.adverts = [fed.adverts[0], {"participant": "p01", "identity_key": fed.adverts[1]["identity_key"],
                                    "advert": doc, "signature": secagg.sign_doc(fed.keys["p01"], doc)}, fed.adverts[2]]
    docs = {p: fed.sessions[p].shares(fed.view(), fed.keys[p])["doc"] for p in ("p00", "p02")}
    c_pk = secagg.verify_adverts(ROUND, fed.adverts)["p00"].c_pk
    inbox = {**Federation.inbox(docs, "p00"),
             "p01": secagg.seal_share(liar.keys.c_key, c_pk, round_id=ROUND, sender="p01", recipient="p00",
                                      b_share=b"\x00" * 66, sk_share=b"\x00" * 66)}
    with pytest.raises(secagg.SecAggError, match="key agreement"):
        fed.sessions["p00"].mask(fed.view(u2=["p00", "p01", "p02"], inbox=inbox), np.zeros(3))


def test_keys_cannot_change_after_the_shares_were_made() -> None:
    fed, docs = _shared()
    swapped = list(fed.adverts)
    intruder = secagg.ParticipantSession(round_id=ROUND, participant="p03")
    swapped[3] = {"participant": "p03", "identity_key": fed.adverts[3]["identity_key"],
                  **intruder.advert(fed.keys["p03"])}
    with pytest.raises(secagg.SecAggError, match="changed"):
        fed.sessions["p00"].mask(fed.view(adverts=swapped, u2=fed.ids, inbox=Federation.inbox(docs, "p00")),
                                 np.zeros(3))


def test_shares_are_bound_to_sender_recipient_and_round() -> None:
    fed, docs = _shared(3)  # the complete graph: everyone shares with everyone
    s = fed.sessions["p00"]
    rnd = secagg.Round(ROUND, secagg.verify_adverts(ROUND, fed.adverts))
    with pytest.raises(secagg.SecAggError, match="does not decrypt"):  # p02's share forwarded to p00
        secagg.open_share(s.keys.c_key, rnd.keys["p01"].c_pk, docs["p01"]["shares"]["p02"], round_id=ROUND,
                          sender="p01", recipient="p00")
    raw = bytearray(base64.b64decode(docs["p01"]["shares"]["p00"]))
    raw[-1] ^= 1
    with pytest.raises(secagg.SecAggError, match="does not decrypt"):
        secagg.open_share(s.keys.c_key, rnd.keys["p01"].c_pk, base64.b64encode(bytes(raw)).decode(),
                          round_id=ROUND, sender="p01", recipient="p00")
    with pytest.raises(secagg.SecAggError, match="does not decrypt"):
        secagg.open_share(s.keys.c_key, rnd.keys["p01"].c_pk, docs["p01"]["shares"]["p00"], round_id=ROUND + 1,
                          sender="p01", recipient="p00")
    lying = {**Federation.inbox(docs, "p00")}
    lying.pop("p01")
    with pytest.raises(secagg.SecAggError, match="sent this participant no shares"):
        s.mask(fed.view(u2=fed.ids, inbox=lying), np.zeros(3))


def test_one_view_per_round_is_masked_signed_and_revealed() -> None:
    fed, docs = _shared(6)
    a, key = fed.sessions["p00"], fed.keys["p00"]
    a.mask(fed.view(u2=fed.ids, inbox=Federation.inbox(docs, "p00")), np.zeros(3))
    with pytest.raises(secagg.SecAggError, match="another U2"):
        a.mask(fed.view(u2=fed.ids[:5], inbox=Federation.inbox(docs, "p00")), np.zeros(3))
    view = fed.view(u2=fed.ids, u3=fed.ids)
    a.consistency(view, key)
    other = fed.view(u2=fed.ids, u3=[p for p in fed.ids if p != "p05"])
    with pytest.raises(secagg.SecAggError, match="another view"):
        a.consistency(other, key)
    with pytest.raises(secagg.SecAggError, match="not the one this participant signed"):
        a.unmask({**other, "consistency": []}, key)


def test_shares_are_revealed_only_after_enough_signatures_on_the_same_view() -> None:
    fed = Federation(6)
    docs = {p: fed.sessions[p].shares(fed.view(), fed.keys[p])["doc"] for p in fed.ids}
    for p in fed.ids:
        fed.sessions[p].mask(fed.view(u2=fed.ids, inbox=Federation.inbox(docs, p)), np.zeros(3))
    view = fed.view(u2=fed.ids, u3=fed.ids)
    sigs = [{"participant": p, "signature": fed.sessions[p].consistency(view, fed.keys[p])["signature"]}
            for p in fed.ids[:3]]
    with pytest.raises(secagg.SecAggError, match="3 participants signed this view, 4 needed"):
        fed.sessions["p00"].unmask({**view, "consistency": sigs}, fed.keys["p00"])
    forged = sigs + [{"participant": "p04", "signature": sigs[0]["signature"]}]
    with pytest.raises(secagg.SecAggError, match="not signed"):
        fed.sessions["p00"].unmask({**view, "consistency": forged}, fed.keys["p00"])
    fourth = fed.sessions["p03"].consistency(view, fed.keys["p03"])
    sigs.append({"participant": "p03", "signature": fourth["signature"]})
    doc = fed.sessions["p00"].unmask({**view, "consistency": sigs}, fed.keys["p00"])["doc"]
    assert doc["sk_shares"] == {} and "p00" in doc["b_shares"]


def test_session_state_survives_a_restart() -> None:
    fed, docs = _shared()
    before = fed.sessions["p02"]
    y1 = before.mask(fed.view(u2=fed.ids, inbox=Federation.inbox(docs, "p02")), np.ones(5))
    again = secagg.ParticipantSession.from_state(before.to_state())
    y2 = again.mask(fed.view(u2=fed.ids, inbox={}), np.ones(5))  # shares already opened: the inbox is not needed
    np.testing.assert_array_equal(y1, y2)


def test_the_cloud_detects_a_wrong_share_and_a_missing_one() -> None:
    fed = Federation(6)
    docs = {p: fed.sessions[p].shares(fed.view(), fed.keys[p])["doc"] for p in fed.ids}
    u2 = fed.ids
    ys = {p: fed.sessions[p].mask(fed.view(u2=u2, inbox=Federation.inbox(docs, p)), np.ones(4)) for p in u2[:5]}
    u3 = sorted(ys)
    view = fed.view(u2=u2, u3=u3)
    sigs = [{"participant": p, "signature": fed.sessions[p].consistency(view, fed.keys[p])["signature"]} for p in u3]
    responses = {p: fed.sessions[p].unmask({**view, "consistency": sigs}, fed.keys[p])["doc"] for p in u3}
    rnd = secagg.Round(ROUND, secagg.verify_adverts(ROUND, fed.adverts))
    masked = ckks.sum_residues_plain(list(ys.values()))
    total, _ = secagg.unmask_sum(masked, rnd=rnd, u2=u2, u3=u3, responses=responses)
    np.testing.assert_allclose(secagg.dequantise(total), 5 * np.ones(4), atol=1e-5)
    liar = next(p for p in u3 if "p05" in responses[p]["sk_shares"])
    bad = {**responses, liar: {**responses[liar], "sk_shares": {"p05": "00" * 66}}}
    with pytest.raises(secagg.SecAggError, match="mask key of p05"):
        secagg.unmask_sum(masked, rnd=rnd, u2=u2, u3=u3, responses=bad)
    few = {p: responses[p] for p in u3[:2]}
    with pytest.raises(secagg.SecAggError, match="needed"):
        secagg.unmask_sum(masked, rnd=rnd, u2=u2, u3=u3, responses=few)
