"""A compromised or careless region against a real aggregator (uvicorn; SQLite and PostgreSQL): the test holds an
enrolled region's key and sends what such a region could. Each is refused with its reason and audited; nothing it
sent is counted; a failed audit suspends the region and alerts the compliance officer."""

from __future__ import annotations

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from cloud.record_db import Alert
from federation import ckks
from federation.signing import public_key_b64
from tests.cloud.participants import (
    ADMIN,
    FakeNode,
    assert_reason,
    issue_token,
    open_round,
    random_delta,
    wait_state,
)
from tests.cloud.regions import aggregate_body, blob_of, enroll_region, inputs_body, region_token
from tests.cloud.test_secagg import enrolled


@pytest.fixture
def ctx(http: httpx.Client):  # noqa: ANN201
    return ckks.load_context(http.get("/v1/context").content)


def bodies(rid: int, nodes: list[FakeNode], region_id: str | None, seed: int = 0) -> list[dict]:
    return [n.submission(rid, random_delta(seed + i), n_samples=40 + i, region=region_id)
            for i, n in enumerate(nodes)]


def post(http: httpx.Client, rid: int, body: dict) -> httpx.Response:
    return http.post(f"/v1/rounds/{rid}/region-aggregates", json=body)


def refusals(cloud, region_id: str) -> list[str]:  # noqa: ANN001
    return [e["detail"]["reason"] for e in cloud.audit_entries()
            if e["kind"] in ("region.rejected", "access.denied") and e["actor"] == region_id]


def test_forged_malformed_misaddressed_and_replayed_aggregates_are_refused(cloud, http, ctx) -> None:  # noqa: ANN001
    cloud.units.regions.audit_rate = 0.0
    nodes = enrolled(http, 6)
    key = enroll_region(http, "r-1")
    rid = open_round(http, quorum=3)
    mine = bodies(rid, nodes[:3], "r-1")
    # a token not issued for a region does not enroll one; a region's id is enrolled once
    generic = issue_token(http, "r-2")
    assert_reason(http.post("/v1/regions", json={"region_id": "r-2", "public_key": public_key_b64(key),
                                                 "token": generic}), 403, "only with a token issued for kind region")
    assert_reason(http.post("/v1/regions", json={"region_id": "r-1", "public_key": public_key_b64(key),
                                                 "token": region_token(http, "r-1")}), 409, "already enrolled")
    # an unenrolled region, and an enrolled one's name with another key
    ghost = aggregate_body(Ed25519PrivateKey.generate(), "r-ghost", rid, mine, ctx=ctx)
    assert_reason(post(http, rid, ghost), 403, "region r-ghost is not enrolled")
    assert_reason(post(http, rid, aggregate_body(Ed25519PrivateKey.generate(), "r-1", rid, mine, ctx=ctx)), 401,
                  "not signed by region r-1's enrolled key")
    # malformed aggregate bytes (hashed and signed as sent), and bytes that are not base64
    assert_reason(post(http, rid, aggregate_body(key, "r-1", rid, mine, aggregate=b"\xa1junk")), 400,
                  "malformed ciphertext blob")
    floats = ckks.sum_encrypted(ctx, [ckks.encrypt(ctx, random_delta(9))])  # parses, but not masked residues
    assert_reason(post(http, rid, aggregate_body(key, "r-1", rid, mine, aggregate=floats)), 400,
                  "expected residues/v1")
    bad64 = {**aggregate_body(key, "r-1", rid, mine, ctx=ctx), "aggregate": "%%%"}
    assert_reason(post(http, rid, bad64), 400, "aggregate is not base64")
    # an envelope forwarded without being listed, and an update its participant addressed to another region
    unlisted = aggregate_body(key, "r-1", rid, mine[:2], ctx=ctx)
    unlisted["members"].append({"envelope": mine[2]["envelope"], "signature": mine[2]["signature"]})
    assert_reason(post(http, rid, unlisted), 400, f"unlisted: ['{nodes[2].id}']")
    elsewhere = bodies(rid, nodes[3:4], "r-other", seed=7)
    assert_reason(post(http, rid, aggregate_body(key, "r-1", rid, [*mine[:2], *elsewhere], ctx=ctx)), 400,
                  f"{nodes[3].id} addressed its update to r-other, not to region r-1")
    # a participant's signature that does not verify spoils the aggregate it is in
    tampered = [dict(m) for m in mine]
    tampered[0] = {**tampered[0], "signature": nodes[1].sign(tampered[0]["envelope"])}
    assert post(http, rid, aggregate_body(key, "r-1", rid, tampered, ctx=ctx)).status_code == 401
    # the honest aggregate: accepted once; an exact resend is acknowledged, never counted twice
    honest = aggregate_body(key, "r-1", rid, mine, ctx=ctx)
    first, again = post(http, rid, honest), post(http, rid, honest)
    assert first.status_code == 200 and not first.json()["duplicate"], first.text
    assert again.status_code == 200 and again.json()["duplicate"], again.text
    report = http.get(f"/v1/rounds/{rid}", headers=ADMIN).json()
    assert sorted(u["participant"] for u in report["updates"]) == sorted(n.id for n in nodes[:3])
    # one of its participants again, in a second aggregate of the region
    again_one = bodies(rid, nodes[:1], "r-1", seed=50) + bodies(rid, nodes[4:5], "r-1", seed=51)
    assert_reason(post(http, rid, aggregate_body(key, "r-1", rid, again_one, ctx=ctx)), 409,
                  f"participant {nodes[0].id} already submitted to round {rid} (via region r-1)")
    # the round closes (the other three answer directly); its aggregate replayed into the next round
    for node, body in zip(nodes[3:], bodies(rid, nodes[3:], None, seed=30), strict=True):
        assert node.submit(rid, body).status_code == 200
    assert wait_state(http, rid, ("completed", "failed"), timeout=60)["state"] == "completed"
    nxt = open_round(http, quorum=3)
    assert_reason(post(http, nxt, honest), 400, f"aggregate is for round {rid}, posted to round {nxt} (a replay?)")
    resigned = {**honest, "statement": {**honest["statement"], "round": nxt}}
    resigned["signature"] = aggregate_body(key, "r-1", nxt, mine, ctx=ctx)["signature"]
    assert_reason(post(http, nxt, resigned), 409, f"forwarded in round {rid} already (a replay)")
    reasons = refusals(cloud, "r-1") + refusals(cloud, "r-ghost")
    for fragment in ("not enrolled", "enrolled key", "malformed ciphertext", "not base64", "unlisted",
                     "addressed its update to r-other", "via region r-1", "(a replay?)"):
        assert any(fragment in r for r in reasons), (fragment, reasons)


def test_a_participant_in_two_regions_is_counted_once(cloud, http, ctx) -> None:  # noqa: ANN001
    cloud.units.regions.audit_rate = 0.0
    nodes = enrolled(http, 4)
    key_a, key_b = enroll_region(http, "r-a"), enroll_region(http, "r-b")
    rid = open_round(http, quorum=3)
    to_a = bodies(rid, nodes[:2], "r-a")
    to_b = bodies(rid, nodes[1:3], "r-b", seed=10)  # nodes[1] signed an update for each region
    assert post(http, rid, aggregate_body(key_a, "r-a", rid, to_a, ctx=ctx)).status_code == 200
    assert_reason(post(http, rid, aggregate_body(key_b, "r-b", rid, to_b, ctx=ctx)), 409,
                  f"participant {nodes[1].id} already submitted to round {rid} (via region r-a)")
    report = http.get(f"/v1/rounds/{rid}", headers=ADMIN).json()
    assert sorted(u["participant"] for u in report["updates"]) == [nodes[0].id, nodes[1].id]
    assert any("via region r-a" in r for r in refusals(cloud, "r-b"))


@pytest.mark.parametrize("cheat", ["drop", "add", "alter", "withhold"])
def test_an_audited_region_that_dropped_added_or_altered_an_input_is_refused_and_suspended(
        cloud, http, ctx, cheat: str) -> None:  # noqa: ANN001
    cloud.units.regions.audit_rate = 1.0
    nodes = enrolled(http, 4)
    key = enroll_region(http, "r-x")
    rid = open_round(http, quorum=3)
    mine = bodies(rid, nodes[:3], "r-x")
    blobs = [blob_of(m) for m in mine]
    other = blob_of(bodies(rid, nodes[3:], None, seed=40)[0])
    summed = {"drop": blobs[:2], "add": [*blobs, other], "alter": [blobs[0], blobs[1], other],
              "withhold": blobs}[cheat]
    body = aggregate_body(key, "r-x", rid, mine, summed, ctx=ctx)
    ack = post(http, rid, body)
    assert ack.status_code == 200 and ack.json()["status"] == "audit", ack.text
    sha = body["statement"]["aggregate_sha256"]
    inputs = {m["envelope"]["participant"]: blob_of(m) for m in mine}
    if cheat == "withhold":  # posts only two of the three inputs it listed
        inputs.pop(nodes[2].id)
    answer = http.post(f"/v1/rounds/{rid}/region-aggregates/{sha}/inputs",
                       json=inputs_body(key, "r-x", rid, sha, inputs))
    fragment = "missing: ['" + nodes[2].id + "']" if cheat == "withhold" else "do not sum to the signed aggregate"
    assert_reason(answer, 409, fragment)
    assert "the region is suspended" in answer.json()["detail"]
    report = http.get(f"/v1/rounds/{rid}", headers=ADMIN).json()
    assert report["updates"] == []  # nothing of the refused aggregate counts
    honest = aggregate_body(key, "r-x", rid, bodies(rid, nodes[3:], "r-x", seed=60), ctx=ctx)
    assert_reason(post(http, rid, honest), 403, "region r-x is suspended")
    entries = cloud.audit_entries()
    failed = [e for e in entries if e["kind"] == "region.audit.failed"]
    assert len(failed) == 1 and failed[0]["detail"]["aggregate_sha256"] == sha
    assert any(e["kind"] == "region.suspended" for e in entries)
    with cloud.units.store.read() as s:  # the compliance officer's alert, with the evidence's hash
        alerts = [a.detail for a in s.scalars(select(Alert).where(Alert.kind == "region.audit_failed"))]
    assert [a["aggregate_sha256"] for a in alerts] == [sha]


def test_audit_answers_signed_by_another_key_or_for_another_aggregate_are_refused(cloud, http, ctx) -> None:  # noqa: ANN001
    cloud.units.regions.audit_rate = 1.0
    nodes = enrolled(http, 3)
    key = enroll_region(http, "r-y")
    rid = open_round(http, quorum=3)
    mine = bodies(rid, nodes, "r-y")
    body = aggregate_body(key, "r-y", rid, mine, ctx=ctx)
    assert post(http, rid, body).json()["status"] == "audit"
    sha = body["statement"]["aggregate_sha256"]
    inputs = {m["envelope"]["participant"]: blob_of(m) for m in mine}
    path = f"/v1/rounds/{rid}/region-aggregates/{sha}/inputs"
    assert_reason(http.post(path, json=inputs_body(Ed25519PrivateKey.generate(), "r-y", rid, sha, inputs)), 401,
                  "not signed by region r-y's enrolled key")
    assert_reason(http.post(f"/v1/rounds/{rid}/region-aggregates/{'0' * 64}/inputs",
                            json=inputs_body(key, "r-y", rid, "0" * 64, inputs)), 404, "no aggregate")
    # while its audit is open, the region's next aggregate waits
    assert_reason(post(http, rid, aggregate_body(key, "r-y", rid, mine[:1], ctx=ctx)), 409,
                  "has not answered the audit")
    ok = http.post(path, json=inputs_body(key, "r-y", rid, sha, inputs))
    assert ok.status_code == 200 and ok.json()["status"] == "accepted", ok.text
    kinds = [e["kind"] for e in cloud.audit_entries()]
    assert "region.audit.passed" in kinds and "region.audit.failed" not in kinds


def test_an_unaudited_region_that_dropped_an_input_fails_the_round_at_unmasking(cloud, http, ctx) -> None:  # noqa: ANN001
    """Without an audit the cloud cannot see the drop when the aggregate arrives; the dropped participant's pairwise
    masks then do not cancel, and the unmasked sum's range check fails the round instead of registering a model."""
    cloud.units.regions.audit_rate = 0.0
    nodes = enrolled(http, 4)
    key = enroll_region(http, "r-z")
    rid = open_round(http, quorum=3)
    mine = bodies(rid, nodes[:3], "r-z")
    cheat = aggregate_body(key, "r-z", rid, mine, [blob_of(m) for m in mine[:2]], ctx=ctx)
    assert post(http, rid, cheat).json()["status"] == "accepted"
    assert nodes[3].submit(rid, bodies(rid, nodes[3:], None, seed=70)[0]).status_code == 200
    report = wait_state(http, rid, ("completed", "failed"), timeout=90)
    assert report["state"] == "failed" and "the unmasked sum is out of range" in report["failure_reason"], report
    assert report["result_model_version"] is None
