"""Test helper: a demo-like cloud database built through the real HTTP API, with at least one row in every state
table (users, enrollment tokens, participants, rounds, updates, refusals, privacy ledger, alerts, models,
evaluations, gate checks, drift reports and baselines, settings)."""

from __future__ import annotations

import httpx

from federation import dp_accounting
from federation.signing import REFUSAL_DOMAIN, sign
from tests.cloud.governance_helpers import drift_report, evaluation_report, glucose
from tests.cloud.participants import (
    ADMIN,
    STEP,
    FakeNode,
    approve,
    create_user,
    open_round,
    random_delta,
    wait_state,
)

GOOD = {"rmse30": 20.0, "rmse60": 30.0, "clarke_ab30": 0.98, "hypo_sens30": 0.6}


def build(http: httpx.Client) -> dict:
    """Two rounds, a promotion, a refusal, a budget alert, drift and federated evaluations; returns what it made."""
    staff = {role: create_user(http, f"{role.replace('_', '-')}-1", role)
             for role in ("operator", "data_scientist", "compliance_officer", "auditor")}
    nodes = [FakeNode(http, f"gw-{i}") for i in (1, 2, 3, 4)]  # three contributors per round at least (the floor)
    for n in nodes:
        assert n.enroll().status_code == 201
    for i, n in enumerate(nodes[:2]):  # telemetry before the round: its drift baseline
        assert http.post("/v1/drift/reports", json=drift_report(n, glucose(600, mean=150, seed=i))).status_code == 200

    rid = open_round(http, headers=staff["operator"])
    for i, n in enumerate((nodes[0], nodes[1], nodes[3])):
        assert n.submit(rid, n.submission(rid, random_delta(i), n_samples=20)).status_code == 200
    doc = {"round": rid, "participant": "gw-3", "reason": "privacy cap"}
    refusal = {**doc, "signature": sign(nodes[2].key, doc, domain=REFUSAL_DOMAIN)}
    assert http.post(f"/v1/rounds/{rid}/refusals", json=refusal).status_code == 200
    report = wait_state(http, rid, ("completed", "failed"))
    assert report["state"] == "completed", report
    version = report["result_model_version"]
    model = http.get(f"/v1/models/{version}", headers=ADMIN).json()  # a candidate is not public
    site = {"n_windows": 100.0, "rmse30": 19.0, "clarke_ab30": 0.99, "hypo_events30": 4.0, "hypo_sens30": 0.5}
    assert http.post(f"/v1/models/{version}/evaluations",
                     json=evaluation_report(nodes[0], version, model["hash"], site)).status_code == 200
    assert http.post(f"/v1/rounds/{rid}/metrics", json={"metrics": GOOD},
                     headers=staff["data_scientist"]).status_code == 200
    approved = http.post(f"/v1/rounds/{rid}/approve", headers=staff["compliance_officer"])
    assert approved.status_code == 200, approved.text
    assert http.post(f"/v1/rounds/{rid}/promote", headers=ADMIN).status_code == 200

    # round 2: gw-1's cap lies between one and two rounds' spend: its update is refused, it is halted and alerted
    one, two = (dp_accounting.epsilon([STEP] * k, accountant="rdp") for k in (1, 2))
    approve(http, http.put("/v1/participants/gw-1/epsilon-cap", json={"epsilon_cap": (one + two) / 2},
                           headers=ADMIN))  # a cap change needs a second person
    rid2 = open_round(http, headers=staff["operator"])
    over = nodes[0].submit(rid2, nodes[0].submission(rid2, random_delta(4), n_samples=20, base_version=version))
    assert over.status_code == 403, over.text
    for i, n in enumerate(nodes[1:], start=5):
        assert n.submit(rid2, n.submission(rid2, random_delta(i), n_samples=20,
                                           base_version=version)).status_code == 200
    report2 = wait_state(http, rid2, ("completed", "failed"))
    assert report2["state"] == "completed", report2
    return {"staff": staff, "nodes": nodes, "rounds": [rid, rid2], "versions": [version,
                                                                              report2["result_model_version"]]}
