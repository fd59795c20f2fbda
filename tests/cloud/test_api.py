"""The aggregator over real HTTP (uvicorn): enrollment, rounds, encrypted FedAvg, and hostile submissions."""

from __future__ import annotations

import base64
import time

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.custodian import Custodian, CustodianRefusal
from federation import ckks, model
from tests.cloud.participants import FakeNode, random_delta
from tests.conftest import ADMIN_TOKEN, ENROLL_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def http(cloud) -> httpx.Client:  # noqa: ANN001
    with httpx.Client(base_url=cloud.url, timeout=30) as client:
        yield client


@pytest.fixture
def nodes(http: httpx.Client) -> list[FakeNode]:
    out = [FakeNode(http, f"gw-{i}", token=ENROLL_TOKEN) for i in (1, 2, 3)]
    for n in out:
        assert n.enroll().status_code == 201
    return out


def open_round(http: httpx.Client, *, quorum: int = 2, deadline_s: float = 60) -> int:
    resp = http.post("/v1/rounds", json={"quorum": quorum, "deadline_s": deadline_s}, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    return resp.json()["round"]


def wait_state(http: httpx.Client, round_id: int, states: tuple[str, ...], timeout: float = 20) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        report = http.get(f"/v1/rounds/{round_id}", headers=ADMIN).json()
        if report["state"] in states:
            return report
        time.sleep(0.05)
    raise AssertionError(f"round {round_id} never reached {states}: {report}")


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


def test_enrollment_checks_token_key_and_identity(http: httpx.Client) -> None:
    node = FakeNode(http, "gw-9", token="wrong")
    resp = node.enroll()
    assert resp.status_code == 403 and "token" in resp.json()["detail"]
    node.token = ENROLL_TOKEN
    assert node.enroll().status_code == 201
    assert node.enroll().json()["status"] == "already-enrolled"
    impostor = FakeNode(http, "gw-9", token=ENROLL_TOKEN)
    resp = impostor.enroll()
    assert resp.status_code == 409 and "another key" in resp.json()["detail"]
    bad_key = http.post("/v1/participants", json={"participant_id": "gw-8", "kind": "gateway",
                                                  "public_key": base64.b64encode(b"x" * 31).decode() + "=" * 0,
                                                  "token": ENROLL_TOKEN})
    assert bad_key.status_code in (400, 422)


def test_admin_endpoints_need_the_admin_token(http: httpx.Client, nodes: list[FakeNode]) -> None:
    assert http.post("/v1/rounds", json={"quorum": 2, "deadline_s": 10}).status_code == 401
    assert http.post("/v1/rounds", json={"quorum": 2, "deadline_s": 10},
                     headers={"Authorization": "Bearer nope"}).status_code == 401
    assert http.get("/v1/participants").status_code == 401


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
    new = http.get("/v1/models/latest").json()
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
    stranger = FakeNode(http, "gw-77", token=ENROLL_TOKEN)
    assert_reason(stranger.submit(round_id, stranger.submission(round_id, random_delta(2), n_samples=5)),
                  403, "not enrolled")
    stale = b.submission(round_id, random_delta(3), n_samples=10, base_version=5)
    assert_reason(b.submit(round_id, stale), 409, "based on model 5")
    wrong_len = b.submission(round_id, np.zeros(model.N_PARAMS + 1), n_samples=10)
    assert_reason(b.submit(round_id, wrong_len), 400, "values")

    assert http.post(f"/v1/rounds/{round_id}/updates", content=b"{not json").status_code == 422
    missing = {k: v for k, v in good.items() if k != "signature"}
    assert a.submit(round_id, missing).status_code == 422
    huge = http.post(f"/v1/rounds/{round_id}/updates", content=b"x" * (5 * 1024 * 1024),
                     headers={"content-type": "application/json"})
    assert_reason(huge, 413, "exceeds")

    assert a.submit(round_id, good).status_code == 200
    replay = a.submit(round_id, good)  # same idempotency key and ciphertext: recognised, not double-counted
    assert replay.status_code == 200 and replay.json()["duplicate"] is True
    second = a.submission(round_id, random_delta(4), n_samples=10)
    assert_reason(a.submit(round_id, second), 409, "already submitted")
    report = http.get(f"/v1/rounds/{round_id}", headers=ADMIN).json()
    assert [u["participant"] for u in report["updates"]] == ["gw-1"]
    events = audit_kinds(cloud)
    assert "update.rejected" in events and "access.denied" in events


def audit_kinds(cloud) -> list[str]:  # noqa: ANN001
    from sqlalchemy import select

    from cloud.db import Event

    with cloud.federation.sessions() as s:
        return list(s.scalars(select(Event.kind).order_by(Event.id)))


def assert_reason(resp: httpx.Response, status: int, fragment: str) -> None:
    assert resp.status_code == status, resp.text
    assert fragment in resp.json()["detail"], resp.json()


def test_late_submission_and_failed_quorum(http: httpx.Client, nodes: list[FakeNode]) -> None:
    round_id = open_round(http, quorum=2, deadline_s=0.5)
    body = nodes[0].submission(round_id, random_delta(1), n_samples=10)
    assert nodes[0].submit(round_id, body).status_code == 200
    report = wait_state(http, round_id, ("completed", "failed"))
    assert report["state"] == "failed" and "quorum not met" in report["failure_reason"]
    late = nodes[1].submission(round_id, random_delta(2), n_samples=10)
    assert_reason(nodes[1].submit(round_id, late), 409, "not collecting")
    assert http.get("/v1/models/latest").json()["version"] == 0  # nothing was decrypted or released


def test_round_closes_at_deadline_with_quorum_of_stragglers(http: httpx.Client, nodes: list[FakeNode]) -> None:
    round_id = open_round(http, quorum=2, deadline_s=1.0)
    for node in nodes[:2]:
        assert node.submit(round_id, node.submission(round_id, random_delta(5), n_samples=10)).status_code == 200
    report = wait_state(http, round_id, ("completed", "failed"))
    assert report["state"] == "completed" and len(report["updates"]) == 2


def test_custodian_refuses_anything_but_a_quorum_aggregate(tmp_path) -> None:  # noqa: ANN001
    custodian = Custodian.dev_unsealed(tmp_path)
    ctx = ckks.load_context(custodian.public_context_bytes)
    blob = ckks.encrypt(ctx, np.arange(5.0))
    with pytest.raises(CustodianRefusal, match="quorum"):
        custodian.decrypt_aggregate(blob, contributors=["gw-1"], quorum=1)
    with pytest.raises(CustodianRefusal, match="distinct"):
        custodian.decrypt_aggregate(blob, contributors=["gw-1", "gw-1"], quorum=2)
    with pytest.raises(CustodianRefusal, match="quorum"):
        custodian.decrypt_aggregate(blob, contributors=["gw-1", "gw-2"], quorum=3)
    np.testing.assert_allclose(custodian.decrypt_aggregate(blob, contributors=["a", "b"], quorum=2),
                               np.arange(5.0), atol=1e-6)
