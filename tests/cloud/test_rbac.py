"""Access control: every role against every bearer-token endpoint, allowed and denied, over real HTTP.

Expectations come from two places that must agree: the permission table in `cloud.rbac`, and the list
written out by hand below. Changing one without the other fails the test.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from cloud import rbac
from tests.cloud.participants import create_user
from tests.conftest import ADMIN_TOKEN

# Written by hand from issues 6 and 13 (not derived from cloud.rbac).
HAND_WRITTEN = {
    "user.create": {"admin"},
    "user.list": {"admin"},
    "whoami": {"admin", "data_scientist", "compliance_officer", "operator", "auditor", "participant", "monitor"},
    "enrollment_token.issue": {"admin"},
    "participant.list": {"admin", "operator", "compliance_officer", "auditor"},
    "participant.configure": {"admin", "compliance_officer"},
    "participant.halt": {"admin", "compliance_officer"},
    "approval.read": {"admin", "compliance_officer", "auditor"},
    "approval.decide": {"admin", "compliance_officer"},
    "round.open": {"admin", "operator", "data_scientist"},
    "round.read": {"admin", "operator", "data_scientist", "compliance_officer", "auditor"},
    "round.evaluate": {"data_scientist"},
    "round.approve": {"compliance_officer"},
    "round.reject": {"compliance_officer", "data_scientist"},
    "model.promote": {"admin", "operator"},
    "model.rollback": {"admin", "operator"},
    "model.explain": {"data_scientist", "compliance_officer", "auditor"},
    "audit.read": {"auditor", "compliance_officer"},
    "privacy.read": {"auditor", "compliance_officer"},
    "alerts.read": {"auditor", "compliance_officer"},
    "intrusion.read": {"auditor", "compliance_officer"},
    "intrusion.lift": {"compliance_officer"},
    # scale-out issue: staff's list of region relays, and a request to reinstate a suspended one (two-person rule)
    "region.read": {"admin", "operator", "compliance_officer", "auditor"},
    "region.reinstate": {"admin", "compliance_officer"},
    "custodian.unseal": {"admin", "compliance_officer"},
    # issue 17: the dashboard's own routes, verifying the ledger, and metrics for a scraper's read-only identity
    "dashboard.read": {"admin", "data_scientist", "compliance_officer", "operator", "auditor"},
    "audit.verify": {"auditor", "compliance_officer"},
    "metrics.read": {"admin", "operator", "monitor"},
    "participant.enroll": {"participant"},
    "update.submit": {"participant"},
    "refusal.submit": {"participant"},
    # issue 18: a gateway's report of a device it contained, a node's acknowledgement of a checked checkpoint
    "intrusion.report": {"participant"},
    "witness.acknowledge": {"participant"},
}

# (method, path, action, json body) for every bearer-token endpoint
ENDPOINTS = [
    ("GET", "/v1/whoami", "whoami", None),
    ("POST", "/v1/users", "user.create", lambda: {"name": f"u-{uuid.uuid4().hex[:8]}", "role": "auditor"}),
    ("GET", "/v1/users", "user.list", None),
    ("POST", "/v1/enrollment-tokens", "enrollment_token.issue", lambda: {"participant_id": "gw-x"}),
    ("GET", "/v1/participants", "participant.list", None),
    ("PUT", "/v1/participants/gw-none/epsilon-cap", "participant.configure", lambda: {"epsilon_cap": 5.0}),
    ("POST", "/v1/participants/gw-none/halt", "participant.halt", lambda: {"reason": "test"}),
    ("POST", "/v1/participants/gw-none/resume", "participant.halt", lambda: {"reason": "test"}),
    ("GET", "/v1/approvals", "approval.read", None),
    ("POST", "/v1/approvals/98/approve", "approval.decide", None),
    ("POST", "/v1/approvals/98/reject", "approval.decide", lambda: {"reason": "test"}),
    ("POST", "/v1/rounds", "round.open", lambda: {"quorum": 2, "deadline_s": 5}),
    ("GET", "/v1/rounds/99", "round.read", None),
    ("GET", "/v1/rounds/99/secagg", "round.read", None),
    ("POST", "/v1/rounds/99/metrics", "round.evaluate", lambda: {"metrics": {"rmse30": 20.0}}),
    ("POST", "/v1/rounds/99/approve", "round.approve", None),
    ("POST", "/v1/rounds/99/reject", "round.reject", lambda: {"reason": "test"}),
    ("POST", "/v1/rounds/99/promote", "model.promote", None),
    ("POST", "/v1/models/rollback", "model.rollback", lambda: {"reason": "test"}),
    ("GET", "/v1/audit/entries", "audit.read", None),
    ("GET", "/v1/audit/checkpoint", "audit.read", None),
    ("GET", "/v1/audit/proof/0", "audit.read", None),
    ("GET", "/v1/privacy/ledger", "privacy.read", None),
    ("GET", "/v1/privacy/alerts", "alerts.read", None),
    ("POST", "/v1/custodian/unseal", "custodian.unseal", lambda: {"share": "wfshare1-0-1-00-00000000"}),
    # governance (cloud/api/promotion.py, cloud/api/drift.py): staff who may read rounds may read these
    ("GET", "/v1/models", "round.read", None),
    ("GET", "/v1/models/0/card", "round.read", None),
    ("GET", "/v1/models/0/evaluations", "round.read", None),
    ("GET", "/v1/gates", "round.read", None),
    ("GET", "/v1/models/0/explanations", "model.explain", None),
    ("GET", "/v1/drift", "round.read", None),
    ("GET", "/v1/drift/alerts", "round.read", None),
    # the dashboard (cloud/api/dashboard.py)
    ("GET", "/v1/dashboard/session", "dashboard.read", None),
    ("GET", "/v1/dashboard/participants", "participant.list", None),
    ("GET", "/v1/dashboard/rounds", "round.read", None),
    ("GET", "/v1/dashboard/alerts", "alerts.read", None),
    ("GET", "/v1/drift/history", "round.read", None),
    ("POST", "/v1/audit/verify", "audit.verify", None),
    # consent withdrawal and retention counts (cloud/api/consent.py)
    ("GET", "/v1/consent", "round.read", None),
    # intrusion response (cloud/api/intrusion.py)
    ("GET", "/v1/intrusion", "intrusion.read", None),
    ("POST", "/v1/intrusion/locks/97/lift", "intrusion.lift", lambda: {"reason": "test"}),
    # region relays (cloud/api/regions.py)
    ("GET", "/v1/regions", "region.read", None),
    ("POST", "/v1/regions/r-none/reinstate", "region.reinstate", lambda: {"reason": "test"}),
]
# server-sent events (dashboard.read): checked per role in tests/cloud/test_dashboard_api.py, which reads no further
# than the first event
STREAMED = {("GET", "/v1/dashboard/events")}
PUBLIC = {("GET", "/healthz"), ("GET", "/v1/context"), ("GET", "/v1/rounds/current"), ("GET", "/v1/models/latest"),
          ("GET", "/v1/models/promoted"), ("GET", "/v1/models/{version}"), ("GET", "/v1/release-key"),
          ("GET", "/v1/releases/current"), ("GET", "/v1/models/{version}/release"), ("GET", "/v1/custodian"),
          # signed TFLite artifacts for devices (cloud/releases.py)
          ("GET", "/v1/releases/current/tflite"), ("GET", "/v1/models/{version}/release/tflite"),
          ("GET", "/v1/releases/tflite-status"),
          # the audit log's checkpoint and consistency proofs, for every node's witness (gateway/witness.py)
          ("GET", "/v1/log/checkpoint"), ("GET", "/v1/log/consistency")}
SIGNED = {("POST", "/v1/participants"), ("POST", "/v1/rounds/{round_id}/updates"),
          ("POST", "/v1/rounds/{round_id}/refusals"), ("POST", "/v1/models/{version}/evaluations"),
          ("POST", "/v1/drift/reports"), ("POST", "/v1/consent/reports"),
          # intrusion response (cloud/intrusion_reports.py, cloud/witnesses.py): signed over the body
          ("POST", "/v1/intrusion/reports"), ("POST", "/v1/log/witness"), ("POST", "/v1/log/witness/batch"),
          # region relays (cloud/api/regions.py): enrolment by one-time token, then signed by the region's key
          ("POST", "/v1/regions"), ("GET", "/v1/regions/{region_id}/participant-keys"),
          ("POST", "/v1/rounds/{round_id}/region-aggregates"),
          ("POST", "/v1/rounds/{round_id}/region-aggregates/{sha256}/inputs"),
          # secure aggregation (cloud/api/secagg.py): signed by the participant's identity key (each message of a
          # batch by its own participant's)
          *{("POST", f"/v1/rounds/{{round_id}}/secagg/{m}") for m in ("keys", "shares", "consistency", "unmask",
                                                                        "view", "views", "batch")}}


def test_permission_table_matches_the_hand_written_list() -> None:
    assert {a: set(r) for a, r in rbac.PERMISSIONS.items()} == HAND_WRITTEN
    assert not rbac.allowed("admin", "no.such.action")
    # the ledgers are for auditors and compliance officers only, not even for admins
    for action in ("audit.read", "privacy.read"):
        assert HAND_WRITTEN[action] == {"auditor", "compliance_officer"}


def test_every_route_is_classified(cloud) -> None:  # noqa: ANN001
    # from the published OpenAPI document: routers included into the app are not flattened into app.routes
    routes = {(m.upper(), path) for path, ops in cloud.app.openapi()["paths"].items() for m in ops
              if path.startswith(("/v1", "/healthz"))}
    walked = {(m, _template(p)) for m, p, _a, _b in ENDPOINTS}
    assert routes == walked | PUBLIC | SIGNED | STREAMED, routes ^ (walked | PUBLIC | SIGNED | STREAMED)


def _template(path: str) -> str:
    return (path.replace("/99", "/{round_id}").replace("/98", "/{approval_id}").replace("/gw-none/", "/{pid}/")
            .replace("/proof/0", "/proof/{seq}").replace("/locks/97/", "/locks/{lock_id}/")
            .replace("/regions/r-none/", "/regions/{region_id}/")
            .replace("/models/0/", "/models/{version}/"))


@pytest.mark.parametrize("role", rbac.ROLES)
def test_role_against_every_endpoint(cloud, role: str) -> None:  # noqa: ANN001
    with httpx.Client(base_url=cloud.url, timeout=30) as http:
        headers = create_user(http, f"user-{role.replace('_', '-')}", role)
        for method, path, action, body in ENDPOINTS:
            kwargs = {"json": body()} if body else {}
            resp = http.request(method, path, headers=headers, **kwargs)
            expected_allowed = role in HAND_WRITTEN[action]
            assert expected_allowed == rbac.allowed(role, action)
            if expected_allowed:
                assert resp.status_code not in (401, 403), (role, method, path, resp.text)
            else:
                assert resp.status_code == 403, (role, method, path, resp.text)
                assert action in resp.json()["detail"]
            anonymous = http.request(method, path, **kwargs)
            assert anonymous.status_code == 401, (method, path, anonymous.text)
            wrong = http.request(method, path, headers={"Authorization": "Bearer wf_forged"}, **kwargs)
            assert wrong.status_code == 401
    entries = _audit(cloud)
    forbidden = {(e["detail"]["action"]) for e in entries
                 if e["kind"] == "access.denied" and e["detail"].get("role") == role}
    assert forbidden == {a for _m, _p, a, _b in ENDPOINTS if role not in HAND_WRITTEN[a]}
    assert not any(e["kind"] == "access.denied" and e["actor"] == "anonymous" for e in entries)
    assert cloud.failures()["401"] == 2 * len(ENDPOINTS)  # anonymous and forged: counted per window, not rows


def _audit(cloud) -> list[dict]:  # noqa: ANN001
    return cloud.audit_entries()


def test_users_are_stored_hashed(cloud) -> None:  # noqa: ANN001
    from sqlalchemy import select

    from cloud.db import User

    with httpx.Client(base_url=cloud.url, timeout=30) as http:
        headers = create_user(http, "alice", "auditor")
        token = headers["Authorization"].removeprefix("Bearer ")
        assert http.get("/v1/whoami", headers=headers).json() == {"name": "alice", "role": "auditor"}
        dup = http.post("/v1/users", json={"name": "alice", "role": "admin"},  # refused when requested
                        headers={"Authorization": "Bearer test-admin-token"})
        assert dup.status_code == 409
        bad_role = http.post("/v1/users", json={"name": "bob", "role": "root"},
                             headers={"Authorization": "Bearer test-admin-token"})
        assert bad_role.status_code == 422
    with cloud.units.store.sessions() as s:
        stored = {u.name: u.token_sha256 for u in s.scalars(select(User))}
    assert stored["alice"] == rbac.token_hash(token) and token not in stored.values()


# Two-person rules, written by hand from issue 13: action -> roles that may approve it.
HAND_WRITTEN_APPROVERS = {
    "user.create": {"compliance_officer"},
    "enrollment_token.issue": {"compliance_officer"},
    "participant.configure": {"admin", "compliance_officer"},
    "participant.halt": {"admin", "compliance_officer"},
    "participant.resume": {"admin", "compliance_officer"},
    "intrusion.lift": {"admin", "compliance_officer"},  # issue 18: requested by a compliance officer only
    "region.reinstate": {"compliance_officer"},  # scale-out issue: requested by an admin or a compliance officer
}


def test_two_person_table_matches_the_hand_written_list() -> None:
    assert {a: set(r) for a, r in rbac.TWO_PERSON.items()} == HAND_WRITTEN_APPROVERS


def test_region_reads_take_a_region_signature_not_a_staff_token(cloud) -> None:  # noqa: ANN001
    """The participants' keys are for enrolled region relays only: no signature, or a staff token, is refused."""
    with httpx.Client(base_url=cloud.url, timeout=30) as http:
        assert http.get("/v1/regions/region-1/participant-keys").status_code == 401
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert http.get("/v1/regions/region-1/participant-keys", headers=admin).status_code in (401, 403)
