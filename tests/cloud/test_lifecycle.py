"""Round lifecycle after decryption: evaluation, gates, segregation of duties, promotion, rollback, releases."""

from __future__ import annotations

import httpx
import pytest

from federation.release import verify_release
from tests.cloud.participants import (
    ADMIN,
    FakeNode,
    assert_reason,
    create_user,
    open_round,
    random_delta,
    run_round,
    wait_state,
)


@pytest.fixture
def staff(http: httpx.Client) -> dict[str, dict]:
    return {role: create_user(http, f"{role.replace('_', '-')}-1", role)
            for role in ("operator", "data_scientist", "compliance_officer", "auditor")} | {"admin": ADMIN}


def _round_by(http: httpx.Client, nodes: list[FakeNode], opener: dict, seed: int) -> int:
    base = http.get("/v1/models/promoted").json()["version"]
    rid = open_round(http, headers=opener)
    for i, n in enumerate(nodes):
        body = n.submission(rid, random_delta(seed + i), n_samples=20, base_version=base)
        assert n.submit(rid, body).status_code == 200
    assert wait_state(http, rid, ("completed", "failed"))["state"] == "completed"
    return rid


def test_promotion_needs_evaluation_approval_and_another_person(http: httpx.Client, staff: dict,
                                                                nodes: list[FakeNode]) -> None:
    rid = _round_by(http, nodes, staff["operator"], seed=0)
    assert_reason(http.post(f"/v1/rounds/{rid}/approve", headers=staff["compliance_officer"]), 409, "evaluated")
    assert_reason(http.post(f"/v1/rounds/{rid}/promote", headers=staff["admin"]), 409, "approval")
    ok = http.post(f"/v1/rounds/{rid}/metrics", json={"metrics": {"rmse30": 20.0, "rmse60": 30.0}},
                   headers=staff["data_scientist"])
    assert ok.status_code == 200 and ok.json()["state"] == "evaluated"
    assert_reason(http.post(f"/v1/rounds/{rid}/promote", headers=staff["admin"]), 409, "approval")
    assert http.post(f"/v1/rounds/{rid}/approve", headers=staff["compliance_officer"]).json()["state"] == "staged"
    # the operator opened the round: segregation of duties forbids it to promote, though its role may
    assert_reason(http.post(f"/v1/rounds/{rid}/promote", headers=staff["operator"]), 403, "segregation of duties")
    promoted = http.post(f"/v1/rounds/{rid}/promote", headers=staff["admin"])
    assert promoted.status_code == 200 and promoted.json()["state"] == "promoted"
    model = http.get("/v1/models/promoted", headers=staff["auditor"]).json()
    assert model["round"] == rid and model["status"] == "promoted" and model["metrics"]["rmse30"] == 20.0
    assert set(model["privacy"]) == {"gw-1", "gw-2", "gw-3"}
    public = http.get("/v1/models/promoted").json()  # who contributed and what each spent is not public
    assert public["version"] == model["version"] and public["privacy"] is None and public["participants"] == []
    assert http.get("/v1/models/0").json()["status"] == "retired"
    # the next round trains the promoted model
    assert http.post("/v1/rounds", json={"quorum": 3, "deadline_s": 30},
                     headers=staff["operator"]).json()["base_model_version"] == model["version"]


def test_accuracy_gate_blocks_a_regression_and_rollback_is_one_step(http: httpx.Client, staff: dict,
                                                                    nodes: list[FakeNode]) -> None:
    def through(rid: int, rmse: float) -> httpx.Response:
        http.post(f"/v1/rounds/{rid}/metrics", json={"metrics": {"rmse30": rmse}}, headers=staff["data_scientist"])
        return http.post(f"/v1/rounds/{rid}/approve", headers=staff["compliance_officer"])

    r1 = _round_by(http, nodes, staff["data_scientist"], seed=0)
    assert through(r1, 20.0).status_code == 200
    assert http.post(f"/v1/rounds/{r1}/promote", headers=staff["operator"]).status_code == 200
    r2 = _round_by(http, nodes, staff["data_scientist"], seed=10)
    assert_reason(through(r2, 21.5), 409, "accuracy gate")  # 7.5 % worse, tolerance 5 %
    assert http.get(f"/v1/rounds/{r2}", headers=ADMIN).json()["state"] == "evaluated"
    assert through(r2, 20.9).status_code == 200  # a re-evaluation within tolerance passes
    assert http.post(f"/v1/rounds/{r2}/promote", headers=staff["operator"]).status_code == 200
    back = http.post("/v1/models/rollback", json={"reason": "alerts on devices"}, headers=staff["operator"])
    assert back.status_code == 200 and back.json() == {"promoted": 2 - 1, "rolled_back": 2}
    assert http.get("/v1/models/promoted").json()["version"] == 1
    assert http.get(f"/v1/rounds/{r2}", headers=ADMIN).json()["state"] == "rolled_back"
    assert_reason(http.post("/v1/models/rollback", json={"reason": "again"}, headers=staff["operator"]),
                  409, "one step")
    r3 = _round_by(http, nodes, staff["data_scientist"], seed=20)
    rejected = http.post(f"/v1/rounds/{r3}/reject", json={"reason": "drift"}, headers=staff["compliance_officer"])
    assert rejected.json()["state"] == "rejected" and rejected.json()["model_status"] == "rejected"
    assert_reason(http.post(f"/v1/rounds/{r3}/metrics", json={"metrics": {"rmse30": 1.0}},
                            headers=staff["data_scientist"]), 409, "rejected")
    kinds = [e["kind"] for e in http.get("/v1/audit/entries", headers=staff["auditor"]).json()]
    assert {"model.promoted", "model.rolled_back", "promotion.blocked"} <= set(kinds)


def test_signed_release_of_promoted_models_only(http: httpx.Client, nodes: list[FakeNode], staff: dict) -> None:
    key = http.get("/v1/release-key").json()["public_key"]
    manifest, weights = verify_release(http.get("/v1/releases/current").json(), key)
    assert manifest.version == 0 and len(weights) > 0
    report = run_round(http, nodes)
    candidate = report["result_model_version"]
    assert_reason(http.get(f"/v1/models/{candidate}/release"), 409, "only promoted")
    assert http.get("/v1/models/99/release").status_code == 404
    tampered = http.get("/v1/models/0/release").json()
    tampered["manifest"]["version"] = 7
    with pytest.raises(Exception, match="signature"):
        verify_release(tampered, key)


def test_openapi_document_is_complete(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    paths = doc["paths"]
    for p in ("/v1/participants", "/v1/enrollment-tokens", "/v1/rounds", "/v1/rounds/{round_id}/updates",
              "/v1/rounds/{round_id}/metrics", "/v1/rounds/{round_id}/approve", "/v1/rounds/{round_id}/promote",
              "/v1/models/rollback", "/v1/audit/entries", "/v1/audit/checkpoint", "/v1/privacy/ledger",
              "/v1/privacy/alerts", "/v1/custodian/unseal", "/v1/release-key", "/v1/models/{version}/release",
              "/v1/users"):
        assert p in paths, p
    schemas = doc["components"]["schemas"]
    assert {"Submission", "UpdateEnvelope", "DPReport", "OpenRound", "Enrollment"} <= set(schemas)
    body = paths["/v1/rounds/{round_id}/updates"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"] == "#/components/schemas/Submission"
    assert schemas["Submission"]["properties"]["envelope"]["$ref"] == "#/components/schemas/UpdateEnvelope"
    assert http.get("/docs").status_code == 200
