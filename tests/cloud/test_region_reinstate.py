"""Reinstating a region suspended after a failed audit (scale-out issue), against a real aggregator (uvicorn; SQLite
and PostgreSQL) and the real `wearfed cloud region-reinstate` / `wearfed cloud approve` processes: the suspended
region is refused; one person cannot lift the suspension (not by approving their own request, not as an admin); a
role without the permission gets 403; a request and a second compliance officer's approval lift it; the aggregate
refused while suspended is then accepted; the ledger verifies, names every step and binds the row change."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from sqlalchemy import text

from cloud.audit import StateTampered, verify_ledger
from cloud.engine import make_engine, make_sessionmaker
from federation import ckks
from tests.cloud.participants import ADMIN, COMPLIANCE, assert_reason, create_user, open_round
from tests.cloud.regions import ROOT, aggregate_body, blob_of, enroll_region, inputs_body
from tests.cloud.test_region_attacks import bodies, post
from tests.cloud.test_secagg import enrolled
from tests.conftest import COMPLIANCE_TOKEN

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _wearfed(token: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "federation.cli", "cloud", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "WEARFED_TOKEN": token})


def _suspended(cloud, http: httpx.Client) -> tuple[int, dict]:  # noqa: ANN001
    """Region r-x audited and caught summing two of the three inputs it listed; returns the round and an honest
    aggregate of three other participants (refused while the region is suspended)."""
    ctx = ckks.load_context(http.get("/v1/context").content)
    cloud.units.regions.audit_rate = 1.0
    nodes = enrolled(http, 6)
    key = enroll_region(http, "r-x")
    rid = open_round(http, quorum=3)
    mine = bodies(rid, nodes[:3], "r-x")
    cheat = aggregate_body(key, "r-x", rid, mine, [blob_of(m) for m in mine[:2]], ctx=ctx)
    assert post(http, rid, cheat).json()["status"] == "audit"
    sha = cheat["statement"]["aggregate_sha256"]
    answer = http.post(f"/v1/rounds/{rid}/region-aggregates/{sha}/inputs",
                       json=inputs_body(key, "r-x", rid, sha, {m["envelope"]["participant"]: blob_of(m)
                                                               for m in mine}))
    assert_reason(answer, 409, "the region is suspended")
    cloud.units.regions.audit_rate = 0.0
    return rid, aggregate_body(key, "r-x", rid, bodies(rid, nodes[3:], "r-x", seed=60), ctx=ctx)


def test_two_people_reinstate_a_suspended_region_and_its_next_aggregate_is_accepted(cloud, http) -> None:  # noqa: ANN001
    rid, honest = _suspended(cloud, http)
    assert_reason(post(http, rid, honest), 403, "region r-x is suspended")
    second = create_user(http, "co-2", "compliance_officer")
    scientist = create_user(http, "ds-1", "data_scientist")
    listed = http.get("/v1/regions", headers=ADMIN).json()
    assert [r["id"] for r in listed] == ["r-x"] and "failed the audit" in listed[0]["suspended"]

    # a role without the permission: 403 (and audited as a denial)
    assert_reason(http.post("/v1/regions/r-x/reinstate", json={"reason": "fixed"}, headers=scientist), 403,
                  "region.reinstate")
    assert http.get("/v1/regions", headers=scientist).status_code == 403
    # one person: a request alone, approving one's own request, or an admin's approval change nothing
    done = _wearfed(COMPLIANCE_TOKEN, "region-reinstate", "--url", cloud.url, "--region", "r-x", "--reason",
                    "relay host rebuilt; operator error, key rotated")
    assert done.returncode == 0, done.stderr
    approval = int(done.stdout.split("requested: approval ")[1].split(";")[0])
    own = _wearfed(COMPLIANCE_TOKEN, "approve", "--url", cloud.url, str(approval))
    assert own.returncode == 2 and "two-person rule" in own.stderr, own.stderr
    assert_reason(http.post(f"/v1/approvals/{approval}/approve", headers=ADMIN), 403,
                  "may not approve region.reinstate")
    assert_reason(post(http, rid, honest), 403, "region r-x is suspended")
    # a second compliance officer approves: lifted; the aggregate refused while suspended is accepted now
    decided = _wearfed(second["Authorization"].removeprefix("Bearer "), "approve", "--url", cloud.url, str(approval))
    assert decided.returncode == 0 and "approved: region.reinstate" in decided.stdout, decided.stderr
    assert http.get("/v1/regions", headers=COMPLIANCE).json()[0]["suspended"] is None
    ack = post(http, rid, honest)
    assert ack.status_code == 200 and ack.json()["status"] == "accepted", ack.text
    # nothing left to reinstate: a new request is refused with the reason, as is one for an unknown region
    assert_reason(http.post("/v1/regions/r-x/reinstate", json={"reason": "again"}, headers=ADMIN), 409,
                  "region r-x is not suspended")
    assert_reason(http.post("/v1/regions/r-nope/reinstate", json={"reason": "x"}, headers=ADMIN), 404,
                  "region r-nope is not enrolled")

    entries = cloud.audit_entries()
    kinds = [e["kind"] for e in entries]
    for kind in ("region.suspended", "approval.requested", "approval.rejected", "region.reinstated",
                 "approval.approved", "region.aggregate.accepted"):
        assert kind in kinds, kind
    assert kinds.index("region.suspended") < kinds.index("region.reinstated") < kinds.index("region.aggregate.accepted")
    [lifted] = [e for e in entries if e["kind"] == "region.reinstated"]
    assert lifted["actor"] == "compliance" and lifted["detail"]["approved_by"] == "co-2"
    assert lifted["detail"]["approval"] == approval and "failed the audit" in lifted["detail"]["suspended"]
    assert {"op": "update", "table": "regions", "key": {"id": "r-x"}} in [
        {k: r[k] for k in ("op", "table", "key")} for r in lifted["rows"]]  # the row change, in this entry
    denied = [e["detail"]["action"] for e in entries if e["kind"] == "access.denied" and e["actor"] == "ds-1"]
    assert denied == ["region.reinstate", "region.read"]
    sessions = make_sessionmaker(make_engine(cloud.db_url))
    verify_ledger(sessions)
    # a database edit behind the log's back (what lifting a suspension took before) is caught
    with sessions.begin() as s:
        s.execute(text("UPDATE regions SET suspended = 'edited' WHERE id = 'r-x'"))
    with pytest.raises(StateTampered, match="regions"):
        verify_ledger(sessions)
