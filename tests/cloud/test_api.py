"""The aggregator over real HTTP (uvicorn): enrollment, rounds, encrypted FedAvg, and hostile submissions."""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation import ckks, model
from tests.cloud.participants import (
    ADMIN,
    FakeNode,
    assert_reason,
    issue_token,
    open_round,
    random_delta,
    wait_state,
)


def test_health_labels_the_insecure_custodian(http: httpx.Client) -> None:
    body = http.get("/healthz").json()
    assert body["custodian"] == "insecure-dev-unsealed"
    assert "INSECURE" in body["warning"]


def test_public_context_cannot_decrypt(http: httpx.Client) -> None:
    ctx = ckks.load_context(http.get("/v1/context").content)
    assert not ctx.has_secret_key()
    blob = ckks.encrypt(ctx, np.ones(10))
    with pytest.raises(ckks.CKKSError, match="no secret key"):
        ckks.decrypt(ctx, blob)


def test_enrollment_token_is_one_time_bound_and_audited(cloud, http: httpx.Client) -> None:  # noqa: ANN001
    node = FakeNode(http, "gw-9", token="wrong")
    assert_reason(node.enroll(), 403, "token is not valid")
    node.token = issue_token(http, "gw-9")
    assert node.enroll().status_code == 201
    assert_reason(node.enroll(), 409, "already used")  # replayed: the token was consumed
    impostor = FakeNode(http, "gw-9", token=issue_token(http))  # a fresh unbound token, an enrolled id
    assert_reason(impostor.enroll(), 409, "already enrolled with another key")
    bound = FakeNode(http, "gw-7", token=issue_token(http, "gw-6"))
    assert_reason(bound.enroll(), 403, "issued for gw-6")
    hospital_only = FakeNode(http, "gw-5", token=issue_token(http, None, kind="hospital"))
    assert_reason(hospital_only.enroll(), 403, "issued for a hospital")
    expired = FakeNode(http, "gw-4", token=issue_token(http, "gw-4", ttl_s=0.001))
    time.sleep(0.05)
    assert_reason(expired.enroll(), 403, "expired")
    bad_key = http.post("/v1/participants", json={"participant_id": "gw-8", "kind": "gateway",
                                                  "public_key": base64.b64encode(b"x" * 31).decode(),
                                                  "token": issue_token(http, "gw-8")})
    assert bad_key.status_code in (400, 422)
    assert http.post("/v1/enrollment-tokens", json={}).status_code == 401  # only an admin issues tokens
    kinds = audit_kinds(cloud)
    assert kinds.count("participant.enrolled") == 1
    assert kinds.count("access.denied") >= 4 and "enrollment.rejected" in kinds  # 403s and the 409s
    assert cloud.failures().get("401") == 1  # the anonymous 401: counted in the window's summary, not a row


def test_admin_endpoints_need_the_admin_token(http: httpx.Client, nodes: list[FakeNode]) -> None:
    assert http.post("/v1/rounds", json={"quorum": 2, "deadline_s": 10}).status_code == 401
    assert http.post("/v1/rounds", json={"quorum": 2, "deadline_s": 10},
                     headers={"Authorization": "Bearer nope"}).status_code == 401
    assert http.get("/v1/participants").status_code == 401
    assert http.get("/v1/participants", headers={"Authorization": "Basic " + "x" * 8}).status_code == 401


def test_round_aggregates_encrypted_updates_to_plain_fedavg(http: httpx.Client, nodes: list[FakeNode]) -> None:
    round_id = open_round(http)
    deltas = [random_delta(i) for i in range(3)]
    counts = [100, 300, 600]
    for node, delta, n in zip(nodes, deltas, counts, strict=True):
        resp = node.submit(round_id, node.submission(round_id, delta, n_samples=n))
        assert resp.status_code == 200, resp.text
    report = wait_state(http, round_id, ("completed", "failed"))
    assert report["state"] == "completed", report
    assert sorted(u["participant"] for u in report["updates"]) == ["gw-1", "gw-2", "gw-3"]
    base = np.frombuffer(base64.b64decode(http.get("/v1/models/0").json()["weights"]), dtype=np.float32)
    assert http.get("/v1/models/latest").json()["version"] == 0  # anonymous: a candidate is not public
    new = http.get("/v1/models/latest", headers=ADMIN).json()
    assert new["version"] == 1 and new["participants"] == ["gw-1", "gw-2", "gw-3"]
    got = np.frombuffer(base64.b64decode(new["weights"]), dtype=np.float32)
    expected = base + sum(d * n for d, n in zip(deltas, counts, strict=True)) / sum(counts)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got - base).max() > 1e-3  # the update really moved the model


def test_hostile_submissions_get_4xx_with_a_reason(cloud, http: httpx.Client, nodes: list[FakeNode]) -> None:  # noqa: ANN001
    round_id = open_round(http)
    a, b = nodes[0], nodes[1]
    good = a.submission(round_id, random_delta(1), n_samples=10)

    forged = a.submission(round_id, random_delta(1), n_samples=10, key=Ed25519PrivateKey.generate())
    assert_reason(a.submit(round_id, forged), 401, "signature")

    inflated = {**good, "envelope": {**good["envelope"], "n_samples": 10_000}}  # signed count changed
    assert_reason(a.submit(round_id, inflated), 401, "signature")

    tampered_ct = bytearray(base64.b64decode(good["ciphertext"]))
    tampered_ct[100] ^= 1
    body = {**good, "ciphertext": base64.b64encode(bytes(tampered_ct)).decode()}
    assert_reason(a.submit(round_id, body), 400, "sha256")

    assert_reason(a.submit(round_id + 1, good), 400, "round")
    stranger = FakeNode(http, "gw-77")
    assert_reason(stranger.submit(round_id, stranger.submission(round_id, random_delta(2), n_samples=5)),
                  403, "not enrolled")
    stale = b.submission(round_id, random_delta(3), n_samples=10, base_version=5)
    assert_reason(b.submit(round_id, stale), 409, "based on model 5")
    wrong_len = b.submission(round_id, np.zeros(model.N_PARAMS + 1), n_samples=10)
    assert_reason(b.submit(round_id, wrong_len), 400, "values")
    inf = b.submission(round_id, random_delta(3), n_samples=10)
    inf_body = base64.b64encode(b"").decode()  # empty ciphertext
    assert_reason(b.submit(round_id, {**inf, "ciphertext": inf_body}), 400, "sha256")
    nan_eps = http.post(f"/v1/rounds/{round_id}/updates", headers={"content-type": "application/json"},
                        content=json.dumps(inf).replace(str(inf["envelope"]["dp"]["epsilon_round"]), "NaN"))
    assert nan_eps.status_code == 422

    assert http.post(f"/v1/rounds/{round_id}/updates", content=b"{not json").status_code == 422
    missing = {k: v for k, v in good.items() if k != "signature"}
    assert a.submit(round_id, missing).status_code == 422
    huge = http.post(f"/v1/rounds/{round_id}/updates", content=b"x" * (5 * 1024 * 1024),
                     headers={"content-type": "application/json"})
    assert_reason(huge, 413, "exceeds")

    def chunks():  # no content-length: the endpoint itself measures and refuses
        for _ in range(5):
            yield b"x" * (1024 * 1024)

    assert_reason(http.post(f"/v1/rounds/{round_id}/updates", content=chunks()), 413, "exceeds")

    assert a.submit(round_id, good).status_code == 200
    replay = a.submit(round_id, good)  # same idempotency key and ciphertext: recognised, not double-counted
    assert replay.status_code == 200 and replay.json()["duplicate"] is True
    second = a.submission(round_id, random_delta(4), n_samples=10)
    assert_reason(a.submit(round_id, second), 409, "already submitted")
    report = http.get(f"/v1/rounds/{round_id}", headers=ADMIN).json()
    assert [u["participant"] for u in report["updates"]] == ["gw-1"]
    events = audit_kinds(cloud)
    assert "update.rejected" in events and "access.denied" in events and "update.replayed" in events
    # unauthenticated or malformed (bad signatures, too large, schema): one summary entry, not a row each
    assert cloud.failures() == {"401": 2, "413": 2, "422": 3}


def audit_kinds(cloud) -> list[str]:  # noqa: ANN001
    from sqlalchemy import select

    from cloud.record_db import Event

    with cloud.units.store.sessions() as s:
        return list(s.scalars(select(Event.kind).order_by(Event.seq)))


def expire(cloud, round_id: int) -> None:  # noqa: ANN001
    """Move a round's deadline into the past (no race against a short real deadline on a loaded machine); through
    the store, so the change is committed in the audit log like any other."""
    from cloud.db import Round, utcnow

    with cloud.units.store.tx() as s:
        s.get(Round, round_id).deadline_at = utcnow() - timedelta(seconds=1)


def test_late_submission_and_failed_quorum(cloud, http: httpx.Client, nodes: list[FakeNode]) -> None:  # noqa: ANN001
    round_id = open_round(http, quorum=3, deadline_s=600)
    body = nodes[0].submission(round_id, random_delta(1), n_samples=10)
    assert nodes[0].submit(round_id, body).status_code == 200
    late = nodes[1].submission(round_id, random_delta(2), n_samples=10)
    expire(cloud, round_id)
    report = wait_state(http, round_id, ("completed", "failed"))
    assert report["state"] == "failed" and "quorum not met" in report["failure_reason"]
    assert_reason(nodes[1].submit(round_id, late), 409, "not collecting")
    assert http.get("/v1/models/latest").json()["version"] == 0  # nothing was decrypted or released
    kinds = [e["kind"] for e in cloud.audit_entries()]
    assert "update.rejected" in kinds


def test_round_closes_at_deadline_with_quorum_of_stragglers(cloud, http: httpx.Client,  # noqa: ANN001
                                                            nodes: list[FakeNode]) -> None:
    fourth = FakeNode(http, "gw-4")
    assert fourth.enroll().status_code == 201
    round_id = open_round(http, quorum=3, deadline_s=600)
    for node in nodes:
        assert node.submit(round_id, node.submission(round_id, random_delta(5), n_samples=10)).status_code == 200
    assert http.get(f"/v1/rounds/{round_id}", headers=ADMIN).json()["state"] == "collecting"  # gw-4 awaited
    expire(cloud, round_id)
    report = wait_state(http, round_id, ("completed", "failed"))
    assert report["state"] == "completed" and len(report["updates"]) == 3
    closing = [e for e in cloud.audit_entries()
               if e["kind"] == "round.state" and e["detail"]["state"] == "aggregating"]
    assert closing[0]["detail"]["stragglers"] == ["gw-4"]
