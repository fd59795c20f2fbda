"""Secure aggregation against a real aggregator (uvicorn, SQLite and PostgreSQL): dropouts up to a third recovered,
too many refused, phase deadlines, and hostile secure-aggregation messages refused with a reason and audited."""

from __future__ import annotations

import base64
import time

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation import secagg
from tests.cloud.participants import (
    ADMIN,
    FakeNode,
    assert_reason,
    audit_kinds,
    drive,
    expire,
    expire_phase,
    open_round,
    random_delta,
    wait_state,
)


def enrolled(http: httpx.Client, n: int) -> list[FakeNode]:
    nodes = [FakeNode(http, f"gw-{i}") for i in range(1, n + 1)]
    for node in nodes:
        assert node.enroll().status_code == 201
    return nodes


def weights(http: httpx.Client, version: int | str) -> np.ndarray:
    doc = http.get(f"/v1/models/{version}", headers=ADMIN).json()  # candidates are not public
    return np.frombuffer(base64.b64decode(doc["weights"]), dtype=np.float32)


def submit_all(round_id: int, nodes: list[FakeNode], counts: list[int]) -> dict[str, np.ndarray]:
    deltas = {}
    for i, (node, n) in enumerate(zip(nodes, counts, strict=True)):
        deltas[node.id] = random_delta(100 + i)
        resp = node.submit(round_id, node.submission(round_id, deltas[node.id], n_samples=n))
        assert resp.status_code == 200, resp.text
    return deltas


def test_six_participants_two_drop_after_sharing_equals_fedavg_of_the_four(cloud, http: httpx.Client) -> None:  # noqa: ANN001
    nodes = enrolled(http, 6)
    rid = open_round(http, quorum=3, deadline_s=600)  # all six advertise keys and share their seeds
    status = http.get(f"/v1/rounds/{rid}/secagg", headers=ADMIN).json()
    assert status["u2"] == [n.id for n in nodes] and (status["degree"], status["threshold"]) == (4, 3)
    for gone in (nodes[1], nodes[4]):
        gone.drop_after = "share"  # crashed after sharing: they never send an input
    survivors = [n for n in nodes if n.drop_after is None]
    counts = [100, 300, 600, 50]
    deltas = submit_all(rid, survivors, counts)
    expire(cloud, rid)  # the input phase ends at the deadline without the two
    report = wait_state(http, rid, ("completed", "failed"), timeout=60)
    assert report["state"] == "completed", report
    assert report["contributors"] == [n.id for n in survivors]
    expected = weights(http, 0) + sum(deltas[n.id] * c for n, c in zip(survivors, counts, strict=True)) / sum(counts)
    np.testing.assert_allclose(weights(http, "latest"), expected, atol=1e-5)
    entries = cloud.audit_entries()
    phases = [e["detail"]["phase"] for e in entries if e["kind"] == "secagg.phase"]
    assert phases == ["advertise", "share", "input", "consistency", "unmask", "ready"]
    decrypted = next(e for e in entries if e["kind"] == "aggregate.decrypted")
    assert decrypted["detail"]["unmasked"]["dropped_masks_removed"] == [nodes[1].id, nodes[4].id]
    assert decrypted["detail"]["unmasked"]["self_masks_removed"] == [n.id for n in survivors]


def test_dropouts_after_the_input_and_during_unmasking_are_recovered(cloud, http: httpx.Client) -> None:  # noqa: ANN001
    nodes = enrolled(http, 6)
    rid = open_round(http, quorum=3, deadline_s=600)
    nodes[0].drop_after = "input"  # never signs the view
    nodes[5].drop_after = "consistency"  # signs, then never reveals its shares
    counts = [10, 20, 30, 40, 50, 60]
    deltas = submit_all(rid, nodes, counts)  # all of U2 answered: the input phase closes at once
    for phase, stalled in (("consistency", nodes[0]), ("unmask", nodes[5])):
        drive(http, rid, until=(phase,))
        for n in nodes:
            n.step(rid)
        assert stalled.id not in http.get(f"/v1/rounds/{rid}/secagg", headers=ADMIN).json()["answered"][phase]
        expire_phase(cloud, rid)  # the phase waits for the straggler until its deadline
        drive(http, rid, until=("unmask", "aggregating", "decrypting", "completed", "failed"))
    report = wait_state(http, rid, ("completed", "failed"), timeout=60)
    assert report["state"] == "completed", report
    assert report["contributors"] == [n.id for n in nodes]  # both inputs count: their self-masks were rebuilt
    expected = weights(http, 0) + sum(deltas[n.id] * c for n, c in zip(nodes, counts, strict=True)) / sum(counts)
    np.testing.assert_allclose(weights(http, "latest"), expected, atol=1e-5)
    status = http.get(f"/v1/rounds/{rid}/secagg", headers=ADMIN).json()
    assert status["u4"] == [n.id for n in nodes[1:]] and sorted(status["answered"]["unmask"]) == \
        [n.id for n in nodes[1:5]]


def test_more_dropouts_than_a_third_fail_the_round_and_nothing_is_decrypted(cloud, http: httpx.Client) -> None:  # noqa: ANN001
    nodes = enrolled(http, 6)
    rid = open_round(http, quorum=3, deadline_s=600)
    for gone in nodes[:3]:
        gone.drop_after = "share"
    submit_all(rid, nodes[3:], [10, 10, 10])
    expire(cloud, rid)
    report = wait_state(http, rid, ("completed", "failed"), timeout=60)
    assert report["state"] == "failed" and "at most 2 may" in report["failure_reason"], report
    assert http.get("/v1/models/latest").json()["version"] == 0
    assert "aggregate.decrypted" not in audit_kinds(cloud)


def test_a_participant_that_never_advertises_is_left_out_at_the_phase_deadline(cloud, http: httpx.Client) -> None:  # noqa: ANN001
    nodes = enrolled(http, 4)
    nodes[3].offline = True
    rid = open_round(http, quorum=3, deadline_s=600, inputs=False)
    assert [n.step(rid) for n in nodes] == ["advertise"] * 3 + [None]
    assert http.get(f"/v1/rounds/{rid}", headers=ADMIN).json()["secagg_phase"] == "advertise"  # waits for gw-4
    expire_phase(cloud, rid)
    drive(http, rid, until=("input",))
    status = http.get(f"/v1/rounds/{rid}/secagg", headers=ADMIN).json()
    assert status["u1"] == ["gw-1", "gw-2", "gw-3"]
    submit_all(rid, nodes[:3], [20, 20, 20])  # q 0.1 x 20: two windows per step (plausible)
    report = wait_state(http, rid, ("completed", "failed"), timeout=60)
    assert report["state"] == "completed" and report["contributors"] == ["gw-1", "gw-2", "gw-3"]
    late = nodes[3].advertise(rid)
    assert_reason(late, 409, "not collecting")


def test_hostile_secure_aggregation_messages_are_refused_with_a_reason(cloud, http: httpx.Client) -> None:  # noqa: ANN001
    nodes = enrolled(http, 4)
    a, b = nodes[0], nodes[1]
    rid = open_round(http, deadline_s=600, inputs=False)
    # advertise: forged signature, wrong round, low-order key, a stranger, a second different advert
    forged = a.session(rid).advert(Ed25519PrivateKey.generate())
    assert_reason(http.post(f"/v1/rounds/{rid}/secagg/keys", json=forged), 401, "signature")
    assert_reason(http.post(f"/v1/rounds/{rid + 1}/secagg/keys", json=a.session(rid).advert(a.key)), 400, "round")
    doc = {**a.session(rid).advert(a.key)["advert"], "s_pk": base64.b64encode(b"\x00" * 32).decode()}
    assert_reason(http.post(f"/v1/rounds/{rid}/secagg/keys", json={"advert": doc, "signature":
                                                                    secagg.sign_doc(a.key, doc)}), 400, "X25519")
    stranger = FakeNode(http, "gw-99")
    assert_reason(stranger.advertise(rid), 403, "not enrolled")
    assert a.advertise(rid).status_code == 200
    assert a.advertise(rid).json()["duplicate"] is True  # an exact resend
    other = secagg.ParticipantSession(round_id=rid, participant=a.id).advert(a.key)
    assert_reason(http.post(f"/v1/rounds/{rid}/secagg/keys", json=other), 409, "different")
    # view requests: stale, for another round, by someone who is not in it
    stale = secagg.view_request(a.key, round_id=rid, participant=a.id, at=time.time() - 3600)
    assert_reason(http.post(f"/v1/rounds/{rid}/secagg/view", json=stale), 400, "old")
    assert_reason(stranger.view(rid), 403, "not enrolled")
    # a submission before the input phase
    assert_reason(b.submit(rid, b.submission(rid, random_delta(1), n_samples=5)), 409, "phase")
    drive(http, rid, until=("share",))
    view = b.view(rid).json()
    body = b.session(rid).shares(view, b.key)
    neighbours = sorted(body["doc"]["shares"])
    lacking = {**body["doc"], "shares": {k: v for k, v in body["doc"]["shares"].items() if k != neighbours[0]}}
    assert_reason(http.post(f"/v1/rounds/{rid}/secagg/shares", json={"doc": lacking, "signature":
                                                                      secagg.sign_doc(b.key, lacking)}), 400, "missing")
    drive(http, rid, until=("input",))
    # consistency before its phase; then a wrong view and an unmasking that reveals both shares of one owner
    assert_reason(a.sign_view(rid, {**a.view(rid).json(), "u3": [n.id for n in nodes]}), 409, "phase input")
    submit_all(rid, nodes, [10, 10, 10, 10])
    drive(http, rid, until=("consistency",))
    v = a.view(rid).json()
    wrong = {"kind": "secagg.consistency", "round": rid, "participant": a.id, "view_sha256": "0" * 64}
    assert_reason(http.post(f"/v1/rounds/{rid}/secagg/consistency", json={"doc": wrong, "signature":
                                                                          secagg.sign_doc(a.key, wrong)}),
                  400, "view does not match")
    for n in nodes:
        assert n.sign_view(rid, v).status_code == 200
    v = a.view(rid).json()
    assert v["phase"] == "unmask"
    good = a.session(rid).unmask(v, a.key)["doc"]
    owner = next(iter(o for o in good["b_shares"] if o != a.id))
    both = {**good, "sk_shares": {owner: good["b_shares"][owner]}}
    assert_reason(http.post(f"/v1/rounds/{rid}/secagg/unmask", json={"doc": both, "signature":
                                                                     secagg.sign_doc(a.key, both)}), 400, "never both")
    report = wait_state(http, rid, ("completed", "failed"), timeout=60)
    assert report["state"] == "completed", report
    kinds = audit_kinds(cloud)
    assert kinds.count("secagg.rejected") >= 6 and "access.denied" in kinds


@pytest.mark.parametrize("n", [3])
def test_unmasked_inputs_are_refused(cloud, http: httpx.Client, n: int) -> None:  # noqa: ANN001
    """A float (unmasked) CKKS blob is refused: the cloud only sums masked residues."""
    from federation import ckks

    nodes = enrolled(http, n)
    rid = open_round(http, deadline_s=600)
    body = nodes[0].submission(rid, random_delta(1), n_samples=5)
    ctx = ckks.load_context(http.get("/v1/context").content)
    blob = ckks.encrypt(ctx, ckks.weighted_update(random_delta(1), 5))
    import hashlib

    env = {**body["envelope"], "ciphertext_sha256": hashlib.sha256(blob).hexdigest()}
    from federation.signing import sign

    plain = {"envelope": env, "signature": sign(nodes[0].key, env), "ciphertext": base64.b64encode(blob).decode()}
    assert_reason(nodes[0].submit(rid, plain), 400, "encoding")


def test_a_phase_that_timed_out_while_the_cloud_was_down_gets_one_more_window(cloud, http: httpx.Client) -> None:  # noqa: ANN001
    """The faults replay found it: a cloud killed during the advertise phase came back after the phase's deadline and
    failed the round with '0 participant(s) advertised keys'. Its own downtime no longer counts against them."""
    nodes = enrolled(http, 3)
    rid = open_round(http, quorum=3, deadline_s=600, inputs=False)
    expire_phase(cloud, rid)  # as if the cloud had been down past the advertise deadline
    cloud.units.secagg.resume_after_restart()  # what assembling a restarted cloud does
    cloud.units.secagg.tick()
    assert http.get(f"/v1/rounds/{rid}", headers=ADMIN).json()["secagg_phase"] == "advertise"
    resumed = [e["detail"] for e in cloud.audit_entries()
               if e["kind"] == "secagg.phase" and e["detail"].get("resumed_after_restart")]
    assert len(resumed) == 1 and resumed[0]["round"] == rid and resumed[0]["phase"] == "advertise"
    report = drive(http, rid, until=("input",), nodes=nodes)
    assert report["secagg_phase"] == "input"
