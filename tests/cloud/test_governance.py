"""Gates, evaluation sources, segregation of duties and model cards over real HTTP on a real uvicorn server."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.cloud.governance_helpers import evaluation_report, served, write_validation_set
from tests.cloud.participants import ADMIN, FakeNode, assert_reason, create_user, open_round, random_delta, wait_state

GOOD = {"rmse30": 20.0, "rmse60": 30.0, "clarke_ab30": 0.98, "hypo_sens30": 0.6}


def _staff(http: httpx.Client) -> dict[str, dict]:
    return {role: create_user(http, f"{role.replace('_', '-')}-1", role)
            for role in ("operator", "data_scientist", "compliance_officer", "auditor")} | {"admin": ADMIN}


def _nodes(http: httpx.Client) -> list[FakeNode]:
    out = [FakeNode(http, f"gw-{i}") for i in (1, 2, 3)]
    for n in out:
        assert n.enroll().status_code == 201
    return out


def _completed_round(http: httpx.Client, nodes: list[FakeNode], opener: dict, seed: int = 0) -> tuple[int, int]:
    base = http.get("/v1/models/promoted").json()["version"]
    rid = open_round(http, headers=opener)
    for i, n in enumerate(nodes):
        body = n.submission(rid, random_delta(seed + i), n_samples=20, base_version=base)
        assert n.submit(rid, body).status_code == 200
    report = wait_state(http, rid, ("completed", "failed"))
    assert report["state"] == "completed", report
    return rid, report["result_model_version"]


def _audit(http: httpx.Client, staff: dict) -> list[dict]:
    return http.get("/v1/audit/entries", headers=staff["auditor"], params={"limit": 10_000}).json()


@pytest.mark.parametrize("db_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_each_metric_gate_blocks_approval_by_name_and_is_audited(http: httpx.Client) -> None:
    staff, nodes = _staff(http), _nodes(http)
    rid, version = _completed_round(http, nodes, staff["operator"])
    cases = [({**GOOD, "rmse30": 36.0}, "rmse30_max"), ({**GOOD, "clarke_ab30": 0.90}, "clarke_ab30_min"),
             ({**GOOD, "hypo_sens30": 0.1}, "hypo_sens30_min"), ({"rmse60": 30.0}, "rmse30_present")]
    for metrics, gate in cases:
        ok = http.post(f"/v1/rounds/{rid}/metrics", json={"metrics": metrics}, headers=staff["data_scientist"])
        assert ok.status_code == 200 and ok.json()["state"] == "evaluated"
        assert_reason(http.post(f"/v1/rounds/{rid}/approve", headers=staff["compliance_officer"]), 409,
                      f"gate {gate}")
        checked = [e for e in _audit(http, staff) if e["kind"] == "gates.checked"][-1]["detail"]
        assert checked["passed"] is False and checked["model_version"] == version
        assert [f.split("(")[0] for f in checked["failed"]] == [gate]
        blocked = [e for e in _audit(http, staff) if e["kind"] == "promotion.blocked"][-1]["detail"]
        assert gate in blocked["reason"]
    assert http.get(f"/v1/rounds/{rid}", headers=ADMIN).json()["state"] == "evaluated"
    http.post(f"/v1/rounds/{rid}/metrics", json={"metrics": GOOD}, headers=staff["data_scientist"])
    # only a compliance officer approves: not the data scientist, not the operator, not an admin
    for role in ("data_scientist", "operator", "admin"):
        assert_reason(http.post(f"/v1/rounds/{rid}/approve", headers=staff[role]), 403, "round.approve")
    assert http.post(f"/v1/rounds/{rid}/approve", headers=staff["compliance_officer"]).json()["state"] == "staged"
    assert_reason(http.post(f"/v1/rounds/{rid}/promote", headers=staff["operator"]), 403, "segregation of duties")
    assert_reason(http.post(f"/v1/rounds/{rid}/promote", headers=staff["data_scientist"]), 403, "model.promote")
    assert http.post(f"/v1/rounds/{rid}/promote", headers=staff["admin"]).json()["state"] == "promoted"
    passed = [e["detail"] for e in _audit(http, staff) if e["kind"] == "gates.checked"][-2:]
    assert [(d["action"], d["passed"]) for d in passed] == [("approve", True), ("promote", True)]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_data_scientist_who_opened_a_round_may_not_approve_or_promote(http: httpx.Client) -> None:
    staff, nodes = _staff(http), _nodes(http)
    rid, _ = _completed_round(http, nodes, staff["data_scientist"])
    http.post(f"/v1/rounds/{rid}/metrics", json={"metrics": GOOD}, headers=staff["data_scientist"])
    assert_reason(http.post(f"/v1/rounds/{rid}/approve", headers=staff["data_scientist"]), 403, "round.approve")
    assert http.post(f"/v1/rounds/{rid}/approve", headers=staff["compliance_officer"]).status_code == 200
    assert_reason(http.post(f"/v1/rounds/{rid}/promote", headers=staff["data_scientist"]), 403, "model.promote")
    assert http.post(f"/v1/rounds/{rid}/promote", headers=staff["operator"]).status_code == 200


def test_federated_and_validation_sources_feed_the_gates(tmp_path: Path) -> None:
    gates = tmp_path / "gates.toml"
    gates.write_text("[accuracy]\nrmse30_max_mgdl = 1.0\n[sources]\nrequire = ['posted', 'federated', "
                     "'validation']\n")
    with served(tmp_path, gates_file=gates, validation_file=write_validation_set(tmp_path / "val.npz")) as cloud, \
            httpx.Client(base_url=cloud.url, timeout=30) as http:
        staff, nodes = _staff(http), _nodes(http)
        rid, version = _completed_round(http, nodes, staff["operator"])
        assert http.get(f"/v1/models/{version}").status_code == 403  # a candidate: not public
        m = http.get(f"/v1/models/{version}", headers=staff["auditor"]).json()
        evals = http.get(f"/v1/models/{version}/evaluations", headers=staff["auditor"]).json()
        assert set(evals["by_source"]) == {"validation"} and evals["by_source"]["validation"]["n_windows"] > 100
        http.post(f"/v1/rounds/{rid}/metrics", json={"metrics": {"rmse30": 0.5}}, headers=staff["data_scientist"])
        resp = http.post(f"/v1/rounds/{rid}/approve", headers=staff["compliance_officer"])
        assert_reason(resp, 409, "gate required_sources (federated): federated metrics missing")
        assert "gate rmse30_max (validation)" in resp.json()["detail"]

        hosp = nodes[0]
        site = {"n_windows": 100.0, "rmse30": 0.8, "clarke_ab30": 1.0, "hypo_events30": 4.0, "hypo_sens30": 0.5}
        body = evaluation_report(hosp, version, m["hash"], site)
        assert http.post(f"/v1/models/{version}/evaluations", json=body).json()["status"] == "recorded"
        assert http.post(f"/v1/models/{version}/evaluations", json=body).json()["status"] == "duplicate"
        # adversarial: tampered scores, another key, another version's weights, a stranger, too few windows
        forged = {**body, "metrics": {**site, "rmse30": 0.1}}
        assert_reason(http.post(f"/v1/models/{version}/evaluations", json=forged), 401, "signature")
        other = evaluation_report(hosp, version, m["hash"], site, key=Ed25519PrivateKey.generate())
        assert_reason(http.post(f"/v1/models/{version}/evaluations", json=other), 401, "signature")
        replayed = evaluation_report(hosp, 0, m["hash"], site)
        assert_reason(http.post("/v1/models/0/evaluations", json=replayed), 409, "scores weights")
        assert_reason(http.post(f"/v1/models/{version + 1}/evaluations", json=body), 400, "posted to")
        stranger = FakeNode(http, "gw-9", token="unused")
        assert_reason(http.post(f"/v1/models/{version}/evaluations",
                                json=evaluation_report(stranger, version, m["hash"], site)), 403, "not enrolled")
        few = evaluation_report(nodes[1], version, m["hash"], {**site, "n_windows": 3.0})
        assert_reason(http.post(f"/v1/models/{version}/evaluations", json=few), 400, "n_windows")
        second = evaluation_report(nodes[1], version, m["hash"], {**site, "n_windows": 300.0, "rmse30": 0.6,
                                                                  "hypo_events30": 12.0, "hypo_sens30": 0.25})
        assert http.post(f"/v1/models/{version}/evaluations", json=second).status_code == 200
        fed = http.get(f"/v1/models/{version}/evaluations", headers=staff["auditor"]).json()["by_source"]["federated"]
        assert fed["n_windows"] == 400 and fed["sites"] == 2
        assert fed["rmse30"] == pytest.approx(((100 * 0.8**2 + 300 * 0.6**2) / 400) ** 0.5)
        assert fed["hypo_sens30"] == pytest.approx((4 * 0.5 + 12 * 0.25) / 16)

        resp = http.post(f"/v1/rounds/{rid}/approve", headers=staff["compliance_officer"])
        assert_reason(resp, 409, "gate rmse30_max (validation)")  # federated passes now; validation does not
        assert "required_sources" not in resp.json()["detail"] and "(federated)" not in resp.json()["detail"]
        card = http.get(f"/v1/models/{version}/card", headers=staff["auditor"]).json()
        assert set(card["metrics"]) == {"posted", "federated", "validation"}
        failed = [r for r in card["gates"]["last_check"]["results"] if not r["passed"]]
        # the validation set fails rmse30_max (and, with a fresh model, may fail its hypo gate too); nothing else fails
        assert ("rmse30_max", "validation") in [(r["gate"], r["source"]) for r in failed]
        assert {r["source"] for r in failed} == {"validation"}


def test_lineage_privacy_gate(tmp_path: Path) -> None:
    gates = tmp_path / "gates.toml"
    gates.write_text("[privacy]\nlineage_epsilon_max = 0.5\n")
    with served(tmp_path, gates_file=gates) as cloud, httpx.Client(base_url=cloud.url, timeout=30) as http:
        staff, nodes = _staff(http), _nodes(http)
        rid, _ = _completed_round(http, nodes, staff["operator"])
        http.post(f"/v1/rounds/{rid}/metrics", json={"metrics": GOOD}, headers=staff["data_scientist"])
        resp = http.post(f"/v1/rounds/{rid}/approve", headers=staff["compliance_officer"])
        assert_reason(resp, 409, "privacy gate lineage_epsilon_max")
        assert f"rounds [{rid}]" in resp.json()["detail"] and "> 0.5" in resp.json()["detail"]
        assert "per window)" in resp.json()["detail"]  # the unit these nodes' DP reports declared


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_model_card_json_and_markdown(http: httpx.Client) -> None:
    staff, nodes = _staff(http), _nodes(http)
    r1, v1 = _completed_round(http, nodes, staff["operator"], seed=0)
    http.post(f"/v1/rounds/{r1}/metrics", json={"metrics": GOOD}, headers=staff["data_scientist"])
    http.post(f"/v1/rounds/{r1}/approve", headers=staff["compliance_officer"])
    http.post(f"/v1/rounds/{r1}/promote", headers=staff["admin"])
    r2, v2 = _completed_round(http, nodes, staff["operator"], seed=5)
    card = http.get(f"/v1/models/{v2}/card", headers=staff["compliance_officer"]).json()
    assert card["model"]["version"] == v2 and card["model"]["status"] == "candidate"
    assert card["lineage"]["parent_versions"] == [v1, 0] and card["lineage"]["rounds"] == [r2, r1]
    assert card["lineage"]["round"]["opened_by"] == "operator-1"
    assert card["participants"]["contributors"] == ["gw-1", "gw-2", "gw-3"]
    priv = card["privacy"]
    assert priv["unit"] == "window" and set(priv["this_round"]) == {"gw-1", "gw-2", "gw-3"}
    spend = priv["this_round"]["gw-1"]
    assert spend["delta"] == 1e-5 and spend["accountant"] == "rdp" and spend["unit"] == "window"
    assert spend["epsilon_cumulative"] > spend["epsilon_round"] > 0  # gw-1's second round
    per_round_max = [max(p["epsilon_round"] for p in priv["per_round"][str(r)].values()) for r in (r1, r2)]
    assert priv["lineage_epsilon_sum"] == pytest.approx(sum(per_round_max))
    assert "per reading" in priv["device_ldp"] and card["gates"]["last_check"] is None
    v1_card = http.get(f"/v1/models/{v1}/card", headers=staff["auditor"]).json()
    assert v1_card["metrics"]["posted"]["values"]["rmse30"] == 20.0
    assert v1_card["metrics"]["posted"]["source_note"].startswith("held-out scores posted by a data scientist")
    assert [r["action"] for r in [v1_card["gates"]["last_check"]]] == ["promote"]
    assert v1_card["gates"]["last_check"]["passed"] is True
    md = http.get(f"/v1/models/{v1}/card", params={"format": "md"}, headers=staff["auditor"])
    assert md.headers["content-type"].startswith("text/markdown")
    text = md.text
    for fragment in (f"# Model card: wearfed forecaster v{v1}", "Status: **promoted**", "Parent versions: v0",
                     "| rmse30 | 20 |", "| gw-1 |", "1e-05 | rdp | window |", "Last check: promote by admin",
                     "| lineage_epsilon_max | - | pass |", "per reading"):
        assert fragment in text, fragment
    assert_reason(http.get(f"/v1/models/{v1}/card", params={"format": "xml"}, headers=staff["auditor"]), 400,
                  "format")
    assert http.get(f"/v1/models/{v1}/card").status_code == 401
    assert http.get("/v1/models/77/card", headers=staff["auditor"]).status_code == 404
    listed = http.get("/v1/models", headers=staff["operator"]).json()
    assert [(m["version"], m["status"]) for m in listed] == [(0, "retired"), (v1, "promoted"), (v2, "candidate")]
