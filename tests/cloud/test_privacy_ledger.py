"""The privacy ledger over real HTTP: epsilon recomputed from the declared history, caps, alerts, access."""

from __future__ import annotations

import httpx
import pytest

from federation import dp_accounting
from tests.cloud.participants import (
    ADMIN,
    STEP,
    FakeNode,
    approve,
    assert_reason,
    create_user,
    open_round,
    random_delta,
    run_round,
    wait_state,
)


def test_dishonest_dp_reports_are_rejected_and_audited(cloud, http: httpx.Client, nodes: list[FakeNode]) -> None:  # noqa: ANN001
    a = nodes[0]
    rid = open_round(http)
    assert_reason(a.submit(rid, a.submission(rid, random_delta(1), n_samples=10, understate=0.5)), 400, "understates")
    assert_reason(a.submit(rid, a.submission(rid, random_delta(1), n_samples=10, history=[STEP, (1.0, 0.1, 21)])),
                  400, "must end with this round's step")
    big = a.submission(rid, random_delta(1), n_samples=10)
    big["envelope"]["dp"]["delta"] = 1e-3  # re-signed below: a signed but too-weak delta
    from federation.signing import sign

    big["signature"] = sign(a.key, big["envelope"])
    assert_reason(a.submit(rid, big), 400, "delta")
    lying_round = a.submission(rid, random_delta(1), n_samples=10)
    lying_round["envelope"]["dp"]["epsilon_round"] = 0.01
    lying_round["signature"] = sign(a.key, lying_round["envelope"])
    assert_reason(a.submit(rid, lying_round), 400, "round epsilon")
    assert a.submit(rid, a.submission(rid, random_delta(1), n_samples=10)).status_code == 200
    for n in nodes[1:]:
        assert n.submit(rid, n.submission(rid, random_delta(2), n_samples=10)).status_code == 200
    wait_state(http, rid, ("completed",))
    # round 2: gw-1 "forgets" its first round (sends a history of one step again)
    rid2 = open_round(http, headers=create_user(http, "op", "operator"))
    dropped = a.submission(rid2, random_delta(3), n_samples=10, history=[STEP], base_version=0)
    assert_reason(a.submit(rid2, dropped), 409, "rounds were dropped")
    honest = a.submission(rid2, random_delta(3), n_samples=10, base_version=0)
    assert a.submit(rid2, honest).status_code == 200
    rejected = [e for e in cloud.audit_entries() if e["kind"] == "update.rejected"]
    assert len(rejected) == 5 and all(e["detail"]["ciphertext_sha256"] for e in rejected)
    auditor = create_user(http, "aud", "auditor")
    ledger = {p["participant"]: p for p in http.get("/v1/privacy/ledger", headers=auditor).json()}
    entries = ledger["gw-1"]["entries"]
    assert [e["round"] for e in entries] == [rid, rid2]
    assert entries[-1]["epsilon_recomputed"] == pytest.approx(dp_accounting.epsilon([STEP, STEP], accountant="rdp"))
    assert entries[0]["epsilon_recomputed"] < entries[1]["epsilon_recomputed"] == ledger["gw-1"]["epsilon_spent"]


def test_cap_refuses_the_update_raises_an_alert_and_excludes_the_participant(http: httpx.Client,
                                                                             nodes: list[FakeNode]) -> None:
    compliance = create_user(http, "carol", "compliance_officer")
    nodes = [*nodes, FakeNode(http, "gw-4")]  # three must remain once gw-1 is halted
    assert nodes[-1].enroll().status_code == 201
    one = dp_accounting.epsilon([STEP], accountant="rdp")
    two = dp_accounting.epsilon([STEP, STEP], accountant="rdp")
    cap = (one + two) / 2
    approve(http, http.put("/v1/participants/gw-1/epsilon-cap", json={"epsilon_cap": cap}, headers=ADMIN))
    assert http.put("/v1/participants/gw-1/epsilon-cap", json={"epsilon_cap": -1},
                    headers=compliance).status_code == 422
    assert run_round(http, nodes, seed=0)["state"] == "completed"
    rid = open_round(http)
    a = nodes[0]
    assert_reason(a.submit(rid, a.submission(rid, random_delta(5), n_samples=10)), 403, "privacy cap")
    alerts = http.get("/v1/privacy/alerts", headers=compliance).json()
    assert [(x["kind"], x["participant"]) for x in alerts] == [("budget.exceeded", "gw-1")]
    assert http.get("/v1/privacy/alerts", headers=ADMIN).status_code == 403  # not even an admin
    assert http.get("/v1/privacy/ledger", headers=ADMIN).status_code == 403
    for n in nodes[1:]:
        assert n.submit(rid, n.submission(rid, random_delta(6), n_samples=10)).status_code == 200
    wait_state(http, rid, ("completed",))
    parts = {p["id"]: p for p in http.get("/v1/participants", headers=compliance).json()}
    assert parts["gw-1"]["halted"] and not parts["gw-2"]["halted"]
    nxt = http.post("/v1/rounds", json={"quorum": 3, "deadline_s": 30}, headers=ADMIN).json()
    assert nxt["expected"] == ["gw-2", "gw-3", "gw-4"]  # refused further rounds
    assert_reason(a.submit(nxt["round"], a.submission(nxt["round"], random_delta(7), n_samples=10)),
                  403, "halted")
    # raising the cap is a configuration change (two persons), audited; it un-halts the participant
    asked = http.put("/v1/participants/gw-1/epsilon-cap", json={"epsilon_cap": 50.0}, headers=compliance)
    assert_reason(http.post(f"/v1/approvals/{asked.json()['id']}/approve", headers=compliance), 403, "two-person")
    raised = http.post(f"/v1/approvals/{asked.json()['id']}/approve", headers=ADMIN)
    assert raised.json()["result"]["halted"] is False
    kinds = [e["kind"] for e in http.get("/v1/audit/entries", headers=compliance).json()]
    assert kinds.count("config.changed") == 2 and "budget.alert" in kinds


def test_reaching_the_cap_exactly_halts_with_an_alert(http: httpx.Client, nodes: list[FakeNode]) -> None:
    one = dp_accounting.epsilon([STEP], accountant="rdp")
    approve(http, http.put("/v1/participants/gw-2/epsilon-cap", json={"epsilon_cap": one}, headers=ADMIN))
    assert run_round(http, nodes)["state"] == "completed"
    compliance = create_user(http, "carol", "compliance_officer")
    alerts = http.get("/v1/privacy/alerts", headers=compliance).json()
    assert [(x["kind"], x["participant"]) for x in alerts] == [("budget.exhausted", "gw-2")]
    assert alerts[0]["detail"]["delta"] == 1e-5 and alerts[0]["detail"]["unit"] == "window"
