"""Attack (issue 13, item 3 and 7): one admin isolates one participant's update.

Before: the admin enrolled a participant of its own, opened a quorum-2 round with the victim, submitted Enc(0) with
n_samples=1 (or a byte copy of the victim's ciphertext under a second identity), and read the victim's delta off the
candidate model served to anyone at /v1/models/latest (max error 3.2e-7). Each step now fails, against a real cloud.
"""

from __future__ import annotations

import httpx
import numpy as np

from federation import model
from tests.cloud.participants import (
    ADMIN,
    COMPLIANCE,
    FakeNode,
    approve,
    assert_reason,
    create_user,
    open_round,
    random_delta,
    wait_state,
)


def test_one_admin_cannot_enroll_a_participant_alone(http: httpx.Client) -> None:
    asked = http.post("/v1/enrollment-tokens", json={"participant_id": "sybil-1"}, headers=ADMIN)
    assert asked.status_code == 202 and asked.json()["state"] == "pending"
    sybil = FakeNode(http, "sybil-1", token=asked.json()["secret"]["token"])
    assert_reason(sybil.enroll(), 403, "awaits a second person")
    assert_reason(http.post(f"/v1/approvals/{asked.json()['id']}/approve", headers=ADMIN), 403, "two-person")
    # nor through a staff identity of its own making: creating a user is two-person too
    made = http.post("/v1/users", json={"name": "my-co", "role": "compliance_officer"}, headers=ADMIN)
    own = {"Authorization": f"Bearer {made.json()['secret']['token']}"}
    assert http.get("/v1/whoami", headers=own).status_code == 401  # not a user until approved
    assert_reason(http.post(f"/v1/approvals/{asked.json()['id']}/approve", headers=own), 401, "bearer token")
    approvals = http.get("/v1/approvals", headers=COMPLIANCE, params={"state": "pending"}).json()
    assert {a["action"] for a in approvals} == {"enrollment_token.issue", "user.create"}


def test_a_round_cannot_be_opened_for_fewer_than_three_contributors(http: httpx.Client,
                                                                     nodes: list[FakeNode]) -> None:
    assert_reason(http.post("/v1/rounds", json={"quorum": 2, "deadline_s": 60}, headers=ADMIN), 409,
                  "minimum of 3 distinct contributors")


def test_a_copy_of_the_victims_ciphertext_is_refused(http: httpx.Client, nodes: list[FakeNode]) -> None:
    victim, sybil = nodes[0], nodes[1]
    rid = open_round(http)
    body = victim.submission(rid, random_delta(1), n_samples=100)
    assert victim.submit(rid, body).status_code == 200
    copy = sybil.submission(rid, np.zeros(model.N_PARAMS), n_samples=100)
    copy["envelope"]["ciphertext_sha256"] = body["envelope"]["ciphertext_sha256"]
    copy["ciphertext"] = body["ciphertext"]
    copy["signature"] = sybil.sign(copy["envelope"])
    assert_reason(sybil.submit(rid, copy), 409, "identical ciphertexts are refused")


def test_candidates_and_who_contributed_are_not_public(http: httpx.Client, nodes: list[FakeNode]) -> None:
    rid = open_round(http)
    public_round = http.get("/v1/rounds/current").json()
    assert public_round["expected"] == []  # nobody learns who else is in a round
    for i, n in enumerate(nodes):
        assert n.submit(rid, n.submission(rid, random_delta(i), n_samples=50)).status_code == 200
    version = wait_state(http, rid, ("completed",))["result_model_version"]
    assert_reason(http.get(f"/v1/models/{version}"), 403, "candidate")
    assert http.get("/v1/models/latest").json()["version"] == 0  # the newest that was ever in production
    assert http.get("/v1/models/0").json()["participants"] == [] and http.get("/v1/models/0").json()["privacy"] is None
    auditor = create_user(http, "aud", "auditor")
    assert http.get(f"/v1/models/{version}", headers=auditor).json()["participants"] == ["gw-1", "gw-2", "gw-3"]
    signed = nodes[0].signed_get(f"/v1/models/{version}")  # an enrolled participant may score a candidate
    assert signed.status_code == 200 and signed.json()["privacy"] is None


def test_cap_changes_and_halts_need_a_second_person(http: httpx.Client, nodes: list[FakeNode]) -> None:
    asked = http.post("/v1/participants/gw-2/halt", json={"reason": "suspicious"}, headers=COMPLIANCE)
    assert asked.status_code == 202
    assert_reason(http.post(f"/v1/approvals/{asked.json()['id']}/approve", headers=COMPLIANCE), 403, "two-person")
    listed = {p["id"]: p for p in http.get("/v1/participants", headers=COMPLIANCE).json()}
    assert listed["gw-2"]["halted"] is False
    approve(http, asked, approver=ADMIN)
    listed = {p["id"]: p for p in http.get("/v1/participants", headers=COMPLIANCE).json()}
    assert listed["gw-2"]["halted"] is True
    assert http.post("/v1/rounds", json={"quorum": 3, "deadline_s": 60}, headers=ADMIN).status_code == 409
    resumed = http.post("/v1/participants/gw-2/resume", json={"reason": "cleared"}, headers=ADMIN)
    approve(http, resumed)
    assert http.post("/v1/rounds", json={"quorum": 3, "deadline_s": 60}, headers=ADMIN).json()["expected"] == [
        "gw-1", "gw-2", "gw-3"]
