"""Secure aggregation's batches (`/secagg/views`, `/secagg/batch`) against a real aggregator: a whole round driven by
batches equals FedAvg; a forged signature or a stranger refuses the batch whole and stores nothing; every other
refusal is the message's own; the views of a batch are exactly the views each participant would get alone."""

from __future__ import annotations

import time

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation import secagg
from federation.limits import MAX_BATCH
from federation.responses import SecAggView, SecAggViews
from tests.cloud.participants import ADMIN, FakeNode, assert_reason, audit_kinds, open_round, wait_state
from tests.cloud.test_secagg import enrolled, submit_all, weights

FIELD = {"advertise": "keys", "share": "shares", "consistency": "consistency", "unmask": "unmask"}


def views_of(http: httpx.Client, rid: int, nodes: list[FakeNode], *, at: float | None = None) -> SecAggViews:
    reqs = [secagg.view_request(n.key, round_id=rid, participant=n.id, at=time.time() if at is None else at)
            for n in nodes]
    resp = http.post(f"/v1/rounds/{rid}/secagg/views", json={"requests": reqs})
    assert resp.status_code == 200, resp.text
    return SecAggViews.model_validate(resp.json())


def answer(node: FakeNode, rid: int, phase: str, view: dict) -> dict:
    s = node.session(rid)
    return {"advertise": lambda: s.advert(node.key), "share": lambda: s.shares(view, node.key),
            "consistency": lambda: s.consistency(view, node.key), "unmask": lambda: s.unmask(view, node.key)}[phase]()


def batch_step(http: httpx.Client, rid: int, nodes: list[FakeNode]) -> str:
    """Every node answers the round's current phase in one view batch and one message batch; the phase answered."""
    views = views_of(http, rid, nodes)
    phase = views.phase
    bodies = [answer(n, rid, phase, views.view_of(own).model_dump(mode="json"))
              for n, own in zip(nodes, views.views, strict=True)]
    resp = http.post(f"/v1/rounds/{rid}/secagg/batch", json={FIELD[phase]: bodies})
    assert resp.status_code == 200, resp.text
    assert [(r["participant"], r["status"]) for r in resp.json()["results"]] == [(n.id, 200) for n in nodes]
    return phase


def secagg_status(http: httpx.Client, rid: int) -> dict:
    return http.get(f"/v1/rounds/{rid}/secagg", headers=ADMIN).json()


def test_a_round_driven_by_batches_equals_fedavg_and_each_batch_moves_the_phase_once(cloud, http: httpx.Client) -> None:  # noqa: ANN001
    nodes = enrolled(http, 5)
    rid = open_round(http, quorum=3, deadline_s=600, inputs=False)
    assert batch_step(http, rid, nodes) == "advertise"
    assert secagg_status(http, rid)["phase"] == "share"
    assert batch_step(http, rid, nodes) == "share"
    assert secagg_status(http, rid)["phase"] == "input"
    counts = [10, 20, 30, 40, 50]
    deltas = submit_all(rid, nodes, counts)
    assert batch_step(http, rid, nodes) == "consistency"
    assert batch_step(http, rid, nodes) == "unmask"
    report = wait_state(http, rid, ("completed", "failed"), timeout=60, nodes=[])
    assert report["state"] == "completed", report
    expected = weights(http, 0) + sum(deltas[n.id] * c for n, c in zip(nodes, counts, strict=True)) / sum(counts)
    np.testing.assert_allclose(weights(http, "latest"), expected, atol=1e-5)
    kinds = audit_kinds(cloud)  # each message audited on its own, as if posted alone
    assert [kinds.count(k) for k in ("secagg.keys", "secagg.share", "secagg.consistency", "secagg.unmask")] == [5] * 4


def test_a_batch_with_one_forged_or_unknown_sender_is_refused_whole(cloud, http: httpx.Client) -> None:  # noqa: ANN001
    nodes = enrolled(http, 3)
    rid = open_round(http, deadline_s=600, inputs=False)
    good = answer(nodes[0], rid, "advertise", {})
    forged = nodes[1].session(rid).advert(Ed25519PrivateKey.generate())  # signed by a key that is not gw-2's
    resp = http.post(f"/v1/rounds/{rid}/secagg/batch", json={"keys": [good, forged]})
    assert_reason(resp, 401, "batch item 1 (gw-2, secagg.advertise)")
    assert "nothing in the batch was accepted" in resp.json()["detail"]
    stranger = FakeNode(http, "gw-99")  # has a token, never enrolled
    unknown = stranger.session(rid).advert(stranger.key)
    resp = http.post(f"/v1/rounds/{rid}/secagg/batch", json={"keys": [good, unknown]})
    assert_reason(resp, 403, "not enrolled")
    assert secagg_status(http, rid)["answered"] == {}  # gw-1's good advert was not stored either time
    reqs = [secagg.view_request(n.key, round_id=rid, participant=n.id, at=time.time()) for n in (nodes[0], stranger)]
    assert_reason(http.post(f"/v1/rounds/{rid}/secagg/views", json={"requests": reqs}), 403, "batch item 1")
    metrics = http.get("/metrics", headers=ADMIN).text  # the forged batch counts as a failed authentication
    assert 'wearfed_cloud_auth_failures_total{status="401"} 1.0' in metrics
    assert "access.denied" in audit_kinds(cloud)
    # alone, the honest nodes' messages still go through
    assert http.post(f"/v1/rounds/{rid}/secagg/batch", json={"keys": [good]}).json()["results"][0]["status"] == 200


def test_each_other_refusal_is_the_message_own_and_duplicates_are_recognised(cloud, http: httpx.Client) -> None:  # noqa: ANN001
    nodes = enrolled(http, 3)
    rid = open_round(http, deadline_s=600, inputs=False)
    a, b, c = (answer(n, rid, "advertise", {}) for n in nodes)
    other_round = nodes[2].session(rid + 1).advert(nodes[2].key)
    early = {"doc": {"kind": "secagg.consistency", "round": rid, "participant": nodes[1].id, "view_sha256": "0" * 64}}
    early["signature"] = secagg.sign_doc(nodes[1].key, early["doc"])
    resp = http.post(f"/v1/rounds/{rid}/secagg/batch", json={"keys": [a, other_round], "consistency": [early]})
    assert resp.status_code == 200, resp.text
    got = [(r["participant"], r["phase"], r["status"]) for r in resp.json()["results"]]
    assert got == [("gw-1", "advertise", 200), ("gw-3", "advertise", 400), ("gw-2", "consistency", 409)]
    assert "round" in resp.json()["results"][1]["detail"] and "phase advertise" in resp.json()["results"][2]["detail"]
    nodes[0].sessions.pop(rid)  # a new session: other keys than the advert already stored
    second = answer(nodes[0], rid, "advertise", {})
    resp = http.post(f"/v1/rounds/{rid}/secagg/batch", json={"keys": [a, second, b, c]})
    assert [(r["status"], r["duplicate"]) for r in resp.json()["results"]] == [(200, True), (409, False),
                                                                             (200, False), (200, False)]
    assert secagg_status(http, rid)["phase"] == "share"  # the phase machine ran once the batch was stored
    assert audit_kinds(cloud).count("secagg.rejected") == 3


def test_batched_views_are_the_views_each_participant_gets_alone(cloud, http: httpx.Client) -> None:  # noqa: ANN001
    nodes = enrolled(http, 4)
    rid = open_round(http, deadline_s=600)  # advertised and shared: the views carry adverts and inboxes
    views = views_of(http, rid, nodes)
    assert views.phase == "input" and len(views.adverts) == 4
    for node, own in zip(nodes, views.views, strict=True):
        alone = SecAggView.model_validate(node.view(rid).json())
        assert views.view_of(own) == alone and own.inbox  # its own shares, from its neighbours
    stale = [secagg.view_request(n.key, round_id=rid, participant=n.id, at=time.time() - 3600) for n in nodes[:1]]
    fresh = [secagg.view_request(n.key, round_id=rid, participant=n.id, at=time.time()) for n in nodes[1:]]
    mixed = SecAggViews.model_validate(http.post(f"/v1/rounds/{rid}/secagg/views",
                                                 json={"requests": stale + fresh}).json())
    assert [v.status for v in mixed.views] == [400, 200, 200, 200] and "old" in mixed.views[0].detail
    assert mixed.views[0].inbox == {}  # a refused request learns nothing of its own


def test_oversized_batches_are_refused_before_anything_is_read(cloud, http: httpx.Client) -> None:  # noqa: ANN001
    nodes = enrolled(http, 1)
    req = secagg.view_request(nodes[0].key, round_id=1, participant=nodes[0].id, at=time.time())
    assert http.post("/v1/rounds/1/secagg/views", json={"requests": [req] * (MAX_BATCH + 1)}).status_code == 422
    assert http.post("/v1/rounds/1/secagg/views", json={"requests": []}).status_code == 422
    huge = {"keys": [{"advert": {"x": "0" * 4_000_000}, "signature": ""}]}
    assert http.post("/v1/rounds/1/secagg/batch", json=huge).status_code == 413
