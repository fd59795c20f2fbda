"""Intrusion response (issue 18) against a real uvicorn cloud with the default thresholds: each rule fires on its
attack, contains it (lock, quarantine, disabled token), raises a compliance alert and is audited, while honest
participants on another address carry on. The attacker speaks from 127.0.0.2 (Linux routes all of 127/8 to lo)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from cloud.audit import verify_ledger
from cloud.intrusion import Intrusion
from cloud.intrusion_config import load_config
from tests.cloud.participants import (
    ADMIN,
    COMPLIANCE,
    FakeNode,
    assert_reason,
    create_user,
    open_round,
    random_delta,
    wait_state,
)
from tests.conftest import ADMIN_TOKEN, COMPLIANCE_TOKEN, CloudHandle, serve_app

ATTACKER = "127.0.0.2"


@pytest.fixture
def ids_cloud(tmp_path, db_url: str) -> Iterator[CloudHandle]:  # noqa: ANN001
    """The cloud with intrusion response at its shipped defaults (rate limits off: they are not under test)."""
    from cloud.app import CloudSettings, create_app
    from cloud.intrusion_config import load_config
    from cloud.throttle import Limits

    settings = CloudSettings(db_url=db_url, state_dir=tmp_path / "cloud-state", admin_token=ADMIN_TOKEN,
                             compliance_token=COMPLIANCE_TOKEN, dev_insecure_custodian=True, tick_seconds=0.1,
                             limits=Limits(requests_per_s=0, auth_failures=10**9), intrusion=load_config())
    app = create_app(settings)
    with serve_app(app) as url:
        yield CloudHandle(url, app, settings.state_dir, db_url)


@pytest.fixture
def http(ids_cloud: CloudHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ids_cloud.url, timeout=30) as client:
        yield client


@pytest.fixture
def attacker(ids_cloud: CloudHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ids_cloud.url, timeout=30,
                      transport=httpx.HTTPTransport(local_address=ATTACKER)) as client:
        yield client


def _enrolled(http: httpx.Client, n: int) -> list[FakeNode]:
    nodes = [FakeNode(http, f"gw-{i}") for i in range(1, n + 1)]
    for node in nodes:
        assert node.enroll().status_code == 201
        assert node.acknowledge().status_code == 200  # honest witnesses: no witness_stale alert (shipped defaults)
    return nodes


def _contained(ids_cloud: CloudHandle, http: httpx.Client) -> list[dict]:
    ids_cloud.app.state.cloud.intrusion.flush()
    entries = http.get("/v1/audit/entries", headers=COMPLIANCE, params={"limit": 5000}).json()
    return [e["detail"] for e in entries if e["kind"] == "intrusion.contained"]


def _alerts(http: httpx.Client) -> list[str]:
    return [a["kind"] for a in http.get("/v1/privacy/alerts", headers=COMPLIANCE).json()]


def test_forged_signatures_lock_the_address_not_the_claimed_participant(ids_cloud, http, attacker) -> None:  # noqa: ANN001
    nodes = _enrolled(http, 3)
    rid = open_round(http, nodes=nodes, deadline_s=600)
    forged = nodes[0].submission(rid, random_delta(0), n_samples=50)
    forged["envelope"]["n_samples"] = 5000  # tampered after signing
    statuses = [attacker.post(f"/v1/rounds/{rid}/updates", json=forged).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 403], statuses  # the third bad signature locks 127.0.0.2
    assert_reason(attacker.get("/healthz"), 403, "locked by intrusion response (bad_signatures)")
    assert http.get("/healthz").status_code == 200  # another address is not
    for i, node in enumerate(nodes):  # the impersonated participant is not locked: its round completes
        assert node.submit(rid, node.submission(rid, random_delta(i), n_samples=50)).status_code == 200
    assert wait_state(http, rid, ("completed",), nodes=nodes, timeout=300)["state"] == "completed"
    [c] = _contained(ids_cloud, http)
    assert (c["rule"], c["key_kind"], c["key"], c["count"]) == ("bad_signatures", "address", ATTACKER, 3)
    assert c["claimed_participant"] == "gw-1" and c["detection_seconds"] >= 0
    assert _alerts(http) == ["intrusion.bad_signatures"]
    locks = http.get("/v1/intrusion", headers=COMPLIANCE).json()["locks"]
    assert [(lk["key_kind"], lk["key"]) for lk in locks] == [("address", ATTACKER)] and locks[0]["until"]
    assert verify_ledger(ids_cloud.app.state.cloud.store.sessions).entries > 0  # raises on any mismatch
    restarted = Intrusion(ids_cloud.app.state.cloud.store, load_config())  # a restart keeps the lock in force
    assert restarted.locked("address", ATTACKER) == "bad_signatures"
    assert restarted.locked("address", "127.0.0.1") is None
    restarted.close()


def test_a_token_burst_locks_the_address(ids_cloud, http, attacker) -> None:  # noqa: ANN001
    statuses = [attacker.get("/v1/participants", headers={"Authorization": f"Bearer wf_guess{i}"}).status_code
                for i in range(12)]
    assert statuses == [401] * 10 + [403] * 2, statuses
    assert http.get("/v1/participants", headers=ADMIN).status_code == 200
    [c] = _contained(ids_cloud, http)
    assert (c["rule"], c["key"], c["count"]) == ("auth_failures", ATTACKER, 10)


def test_replayed_updates_lock_the_address(ids_cloud, http, attacker) -> None:  # noqa: ANN001
    nodes = _enrolled(http, 3)
    rid = open_round(http, nodes=nodes, deadline_s=600)
    captured = nodes[0].submission(rid, random_delta(0), n_samples=50)
    assert nodes[0].submit(rid, captured).status_code == 200
    assert attacker.post(f"/v1/rounds/{rid}/updates", json=captured).json()["duplicate"] is True  # harmless resend
    other = dict(captured, envelope=dict(captured["envelope"], idempotency_key="another-key-123"))
    statuses = [attacker.post(f"/v1/rounds/{rid + 1}/updates", json=captured).status_code,  # another round
                attacker.post(f"/v1/rounds/{rid}/updates", json=other).status_code,  # signature no longer fits
                attacker.post(f"/v1/rounds/{rid + 1}/updates", json=captured).status_code,
                attacker.post(f"/v1/rounds/{rid + 1}/updates", json=captured).status_code,
                attacker.get("/healthz").status_code]
    assert statuses[0] == 400 and statuses[1] == 401 and statuses[-1] == 403, statuses
    rules = {c["rule"] for c in _contained(ids_cloud, http)}
    assert rules == {"replays"}, rules
    assert nodes[0].signed_get("/v1/rounds/current").json()["expected"]  # gw-1 itself is not locked
    # a declared weight far above the round's others: an alert, not a lock (the norm itself is encrypted)
    heavy = nodes[1].submit(rid, nodes[1].submission(rid, random_delta(1), n_samples=5000))
    assert heavy.status_code == 200, heavy.text
    alerts = http.get("/v1/privacy/alerts", headers=COMPLIANCE).json()
    outlier = next(a for a in alerts if a["kind"] == "intrusion.weight_outliers")
    assert outlier["participant"] == "gw-2" and outlier["detail"]["median_of_others"] == 50


def test_a_stolen_staff_token_probing_is_disabled_and_lifted_by_two_people(ids_cloud, http) -> None:  # noqa: ANN001
    stolen = create_user(http, "ds-1", "data_scientist")
    statuses = [http.post("/v1/users", json={"name": f"x{i}", "role": "admin"}, headers=stolen).status_code
                for i in range(6)]
    assert statuses == [403] * 5 + [401], statuses  # the fifth denial disables the user
    [c] = _contained(ids_cloud, http)
    assert (c["rule"], c["key_kind"], c["key"]) == ("denials", "user", "ds-1")
    assert "user ds-1's bearer token disabled" in c["actions"]
    assert _alerts(http) == ["intrusion.denials"]
    lock = http.get("/v1/intrusion", headers=COMPLIANCE).json()["locks"][0]
    lift = f"/v1/intrusion/locks/{lock['id']}/lift"
    reason = {"reason": "token rotated, user confirmed"}
    assert http.post(lift, json={"reason": "x"}, headers=stolen).status_code == 401
    assert_reason(http.post(lift, json=reason, headers=ADMIN), 403, "intrusion.lift")  # an admin alone: refused
    # the compliance officer requests; alone, it cannot approve its own request (two-person rule)
    req = http.post(lift, json=reason, headers=COMPLIANCE)
    assert req.status_code == 202 and req.json()["state"] == "pending", req.text
    assert_reason(http.post(f"/v1/approvals/{req.json()['id']}/approve", headers=COMPLIANCE), 403,
                  "two-person rule")
    assert http.get("/v1/whoami", headers=stolen).status_code == 401  # still disabled while pending
    second = create_user(http, "co-2", "compliance_officer")
    rejected = http.post(lift, json=reason, headers=COMPLIANCE).json()
    assert http.post(f"/v1/approvals/{rejected['id']}/reject", json={"reason": "not yet"},
                     headers=second).json()["state"] == "rejected"
    assert http.get("/v1/whoami", headers=stolen).status_code == 401  # a rejected request lifts nothing
    done = http.post(f"/v1/approvals/{req.json()['id']}/approve", headers=ADMIN)  # the second person: an admin
    assert done.status_code == 200 and done.json()["result"]["lifted"] == lock["id"], done.text
    assert http.get("/v1/whoami", headers=stolen).status_code == 200
    assert_reason(http.post(lift, json=reason, headers=COMPLIANCE), 404, "no active intrusion lock")
    lifted = [e for e in http.get("/v1/audit/entries", headers=COMPLIANCE).json() if e["kind"] == "intrusion.lifted"]
    assert [(e["actor"], e["detail"]["approved_by"]) for e in lifted] == [("compliance", "admin")]


def test_a_participant_lying_about_its_dp_is_locked_and_its_accepted_update_quarantined(ids_cloud, http) -> None:  # noqa: ANN001
    nodes = _enrolled(http, 4)
    rogue = nodes[3]
    rid = open_round(http, nodes=nodes, deadline_s=600)
    assert rogue.submit(rid, rogue.submission(rid, random_delta(3), n_samples=50)).status_code == 200
    # a detection about this participant that arrives after its update was accepted, while the round still takes
    # inputs (signalled directly: through the API, its one submission per round is checked before it is accepted)
    ids_cloud.app.state.cloud.intrusion.signal("implausible_reports", "gw-4", round=rid, check="dp_noise_ceiling")
    [c] = _contained(ids_cloud, http)
    assert (c["rule"], c["key_kind"], c["key"]) == ("implausible_reports", "participant", "gw-4")
    assert f"its update to round {rid} quarantined before the masked sum" in c["actions"]
    assert_reason(rogue.submit(rid, rogue.submission(rid, random_delta(3), n_samples=50)), 403,
                  "locked by intrusion response")
    for i, node in enumerate(nodes[:3]):
        assert node.submit(rid, node.submission(rid, random_delta(i), n_samples=50)).status_code == 200
    done = wait_state(http, rid, ("completed", "failed"), nodes=nodes[:3], timeout=300)
    assert done["state"] == "completed", done
    model = http.get(f"/v1/models/{done['result_model_version']}", headers=create_user(http, "aud", "auditor"))
    assert model.json()["participants"] == ["gw-1", "gw-2", "gw-3"]
    nxt = http.post("/v1/rounds", json={"quorum": 3, "deadline_s": 30}, headers=ADMIN).json()
    assert nxt["expected"] == ["gw-1", "gw-2", "gw-3"]  # later rounds exclude it
    quarantine = http.get("/v1/intrusion", headers=COMPLIANCE).json()["quarantine"]
    assert [(q["round"], q["participant"]) for q in quarantine] == [(rid, "gw-4")]
    assert _alerts(http) == ["intrusion.implausible_reports"]


def test_a_copied_ciphertext_locks_the_copier(ids_cloud, http) -> None:  # noqa: ANN001
    nodes = _enrolled(http, 4)
    victim, copier = nodes[0], nodes[1]
    rid = open_round(http, nodes=nodes, deadline_s=600)
    body = victim.submission(rid, random_delta(0), n_samples=50)
    assert victim.submit(rid, body).status_code == 200
    copy = copier.submission(rid, random_delta(1), n_samples=50)
    copy["envelope"]["ciphertext_sha256"] = body["envelope"]["ciphertext_sha256"]
    copy["ciphertext"] = body["ciphertext"]
    copy["signature"] = copier.sign(copy["envelope"])
    assert_reason(copier.submit(rid, copy), 409, "identical ciphertexts are refused")
    [c] = _contained(ids_cloud, http)
    assert (c["rule"], c["key"], c["copied_from"]) == ("copied_ciphertexts", "gw-2", "gw-1")
    assert_reason(copier.submit(rid, copier.submission(rid, random_delta(1), n_samples=50)), 403, "locked")
