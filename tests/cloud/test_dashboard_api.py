"""The dashboard's routes over real HTTP on a real uvicorn: the change feed filtered per role (and its catch-up and
end), participants with why they are halted, alerts with refused submissions, drift over time, verifying the
ledger (and catching a tampered one), and the page's headers and assets."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from sqlalchemy import select

from cloud.dashboard.feed import ChangeFeed
from cloud.db import User
from cloud.drift import DEFAULT_THRESHOLD
from cloud.record_db import Event
from tests.cloud.governance_helpers import drift_report, glucose
from tests.cloud.participants import (
    ADMIN,
    COMPLIANCE,
    approve,
    create_user,
    open_round,
    random_delta,
    run_round,
    wait_state,
)
from tests.cloud.test_governance import GOOD

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture(autouse=True)
def _no_tflite_export(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEARFED_TFLITE_EXPORT", "off")


def _fast_feed(cloud, **kw) -> ChangeFeed:  # noqa: ANN001
    """The app's change feed with a heartbeat short enough for a reader thread to notice it should stop."""
    feed = ChangeFeed(cloud.units.store, cloud.units.access, heartbeat_s=0.2, **kw)
    cloud.app.state.dashboard_feed = feed
    return feed


class Reader(threading.Thread):
    """Reads one event stream as the page does (Authorization header), collecting parsed events."""

    def __init__(self, url: str, headers: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.headers = url, headers
        self.events: list[tuple[str, dict, str | None]] = []
        self.status: int | None = None
        self.stop = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=30) as c, c.stream("GET", self.url + "/v1/dashboard/events",
                                                      headers=self.headers) as resp:
            self.status = resp.status_code
            if resp.status_code != 200:
                self.ready.set()
                return
            event, data, eid = "message", "", None
            for line in resp.iter_lines():
                if line == "":
                    ended = event == "bye"
                    if data:
                        self.events.append((event, json.loads(data), eid))
                        self.ready.set()
                    event, data, eid = "message", "", None
                    if self.stop.is_set() or ended:
                        return
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
                elif line.startswith("id:"):
                    eid = line[3:].strip()
                if self.stop.is_set():
                    return

    def changes(self) -> list[dict]:
        return [d for e, d, _ in self.events if e == "change"]

    def topics(self) -> set[str]:
        return {t for d in self.changes() for t in d["topics"]}


def test_the_change_feed_names_only_what_each_role_may_read(cloud, http, nodes) -> None:  # noqa: ANN001
    _fast_feed(cloud)
    headers = {"admin": ADMIN, "compliance_officer": COMPLIANCE}
    for role in ("data_scientist", "operator", "auditor", "monitor"):
        headers[role] = create_user(http, f"{role.replace('_', '-')}-1", role)
    readers = {role: Reader(cloud.url, h) for role, h in headers.items()}
    readers["anonymous"] = Reader(cloud.url, {})
    readers["forged"] = Reader(cloud.url, {"Authorization": "Bearer wf_forged"})
    refused = ("monitor", "anonymous", "forged")  # first, so that their audited denials precede the others' hello
    for group in (refused, [r for r in readers if r not in refused]):
        for name in group:
            readers[name].start()
        for name in group:
            assert readers[name].ready.wait(15)
    assert readers["monitor"].status == 403 and readers["anonymous"].status == 401 and readers["forged"].status == 401
    for role in ("admin", "compliance_officer", "data_scientist", "operator", "auditor"):
        assert readers[role].events[0][0] == "hello" and readers[role].events[0][1]["role"] == role
    run_round(http, nodes)
    time.sleep(1.0)  # several polls of the feed
    for r in readers.values():
        r.stop.set()
    for r in readers.values():
        r.join(5)
    # written by hand from cloud/rbac.py: who may read which routes behind a topic
    may = {"admin": {"rounds", "models", "participants"}, "data_scientist": {"rounds", "models"},
           "operator": {"rounds", "models", "participants"},
           "compliance_officer": {"rounds", "models", "participants", "privacy", "audit"},
           "auditor": {"rounds", "models", "participants", "privacy", "audit"}}
    for role, expected in may.items():
        assert readers[role].topics() == expected, role
        with_entries = [d for d in readers[role].changes() if "entries" in d]
        if "audit" in expected:  # the entries themselves only to readers of the audit ledger
            kinds = [e["kind"] for d in with_entries for e in d["entries"]]
            assert kinds.count("update.accepted") == 3 and "round.state" in kinds
        else:
            assert not with_entries, role


def test_a_reconnect_gets_what_it_missed_and_a_disabled_user_is_cut_off(cloud, http, nodes) -> None:  # noqa: ANN001
    _fast_feed(cloud, reauth_s=0.2)
    seq = http.get("/v1/audit/checkpoint", headers=COMPLIANCE).json()["tree_size"] - 1
    req = http.post("/v1/participants/gw-2/halt", json={"reason": "maintenance"}, headers=COMPLIANCE)
    assert req.status_code == 202
    # reconnecting with the last id it saw, the page is told at once what happened since
    late = Reader(cloud.url, {**COMPLIANCE, "Last-Event-ID": str(seq)})
    late.start()
    deadline = time.time() + 10
    while not late.changes() and time.time() < deadline:
        time.sleep(0.05)
    late.stop.set()
    first = late.changes()[0]
    assert {"approvals", "participants", "audit"} <= set(first["topics"])
    assert [e["kind"] for e in first["entries"]][-1] == "approval.requested" and first["entries"][0]["seq"] == seq + 1
    late.join(5)
    # a user whose access ends loses the stream within a re-check
    viewer = create_user(http, "viewer-1", "auditor")
    reader = Reader(cloud.url, viewer)
    reader.start()
    assert reader.ready.wait(10)
    with cloud.units.store.tx() as s:
        s.scalar(select(User).where(User.name == "viewer-1")).disabled = True
    reader.join(10)
    assert not reader.is_alive()
    bye = [d for e, d, _ in reader.events if e == "bye"]
    assert bye and bye[-1]["reconnect"] is False


def test_participants_say_why_they_are_halted_and_alerts_list_refusals(cloud, http, nodes) -> None:  # noqa: ANN001
    approve(http, http.post("/v1/participants/gw-3/halt", json={"reason": "site audit pending"}, headers=COMPLIANCE),
            approver=ADMIN)
    approve(http, http.put("/v1/participants/gw-1/epsilon-cap", json={"epsilon_cap": 4.0}, headers=ADMIN))
    before = http.get("/v1/dashboard/participants", headers=ADMIN).json()
    assert [p["halted"] for p in before] == [False, False, True]
    why = before[2]["halted_reason"]
    assert why["reason"] == "site audit pending" and why["requested_by"] == "compliance"
    assert why["approved_by"] == "admin" and why["kind"] == "participant.halted"
    approve(http, http.post("/v1/participants/gw-3/resume", json={"reason": "audit done"}, headers=COMPLIANCE),
            approver=ADMIN)
    rid = open_round(http)
    base = http.get(f"/v1/rounds/{rid}", headers=ADMIN).json()["base_model_version"]
    over = nodes[0].submit(rid, nodes[0].submission(rid, random_delta(0), n_samples=30, base_version=base))
    assert over.status_code == 403 and "privacy cap" in over.json()["detail"]
    rows = {p["id"]: p for p in http.get("/v1/dashboard/participants", headers=COMPLIANCE).json()}
    assert rows["gw-3"]["halted"] is False and rows["gw-3"]["halted_reason"] is None  # resumed: no reason left
    assert rows["gw-1"]["halted"] is True and rows["gw-1"]["epsilon_cap"] == 4.0
    assert rows["gw-1"]["halted_reason"]["kind"] == "budget.alert:budget.exceeded"
    assert "privacy cap" in rows["gw-1"]["halted_reason"]["reason"]
    ok = nodes[1].submit(rid, nodes[1].submission(rid, random_delta(1), n_samples=30, base_version=base))
    assert ok.status_code == 200
    rows = {p["id"]: p for p in http.get("/v1/dashboard/participants", headers=COMPLIANCE).json()}
    spent = rows["gw-2"]
    assert spent["epsilon_spent"] > 0 and spent["delta"] == 1e-5 and spent["accountant"] == "rdp"
    assert spent["unit"] == "window" and spent["rounds"] == 1 and spent["last_round"] == rid
    alerts = http.get("/v1/dashboard/alerts", headers=COMPLIANCE).json()
    assert [a["kind"] for a in alerts["alerts"]] == ["budget.exceeded"]
    refused = alerts["refused"][0]  # a 403 refusal is audited as access.denied (cloud.store), listed as refused
    assert refused["kind"] == "access.denied" and refused["actor"] == "gw-1" and refused["detail"]["status"] == 403
    assert refused["detail"]["action"] == "submit" and "privacy cap" in refused["detail"]["reason"]
    assert all(e["detail"].get("action") != "submit" for e in alerts["access"])
    assert http.get("/v1/dashboard/alerts", headers=ADMIN).status_code == 403


def test_rounds_drift_history_and_verifying_the_ledger(cloud, http, nodes) -> None:  # noqa: ANN001
    scientist = create_user(http, "scientist-1", "data_scientist")
    post = lambda body: http.post("/v1/drift/reports", json=body)  # noqa: E731
    for i, n in enumerate(nodes):  # a day of training-time telemetry in 6-h windows
        for w in range(4):
            post(drift_report(n, glucose(750, mean=140, seed=10 * i + w), t_start=w * 21600.0,
                              t_end=(w + 1) * 21600.0))
    rid = open_round(http, headers=scientist)
    base = http.get(f"/v1/rounds/{rid}", headers=ADMIN).json()["base_model_version"]
    for i, n in enumerate(nodes):
        assert n.submit(rid, n.submission(rid, random_delta(i), n_samples=30, base_version=base)).status_code == 200
    wait_state(http, rid, ("completed",))
    http.post(f"/v1/rounds/{rid}/metrics", json={"metrics": GOOD}, headers=scientist)
    assert http.post(f"/v1/rounds/{rid}/approve", headers=COMPLIANCE).status_code == 200
    assert http.post(f"/v1/rounds/{rid}/promote", headers=ADMIN).status_code == 200
    post(drift_report(nodes[0], glucose(1500, mean=140, seed=8), t_start=1e5, t_end=1.2e5))
    post(drift_report(nodes[1], glucose(1500, mean=260, seed=9), t_start=1e5, t_end=1.2e5))

    r = http.get("/v1/dashboard/rounds", headers=scientist).json()[0]
    assert (r["round"], r["state"], r["opened_by"], r["evaluated_by"]) == (rid, "promoted", "scientist-1",
                                                                          "scientist-1")
    assert (r["approved_by"], r["decided_by"]) == ("compliance", "admin")
    assert sorted(r["updates"]) == ["gw-1", "gw-2", "gw-3"] and r["duration_s"] > 0
    assert r["metrics_by_source"]["posted"]["rmse30"] == GOOD["rmse30"]
    assert [(c["action"], c["passed"]) for c in r["gate_checks"]] == [("approve", True), ("promote", True)]
    assert {g["gate"] for g in r["gate_checks"][0]["results"]} >= {"rmse30_max", "participant_epsilon_cap"}

    hist = http.get("/v1/drift/history", headers=scientist).json()
    assert hist["threshold_nats"] == DEFAULT_THRESHOLD
    assert [p["kl_nats"] for p in hist["participants"]["gw-1"][:4]] == [None] * 4  # no reference yet
    last = {pid: pts[-1] for pid, pts in hist["participants"].items()}
    assert last["gw-1"]["alert"] is False and last["gw-1"]["kl_nats"] < 0.1
    assert last["gw-2"]["alert"] is True and last["gw-2"]["kl_nats"] > DEFAULT_THRESHOLD

    auditor = create_user(http, "auditor-1", "auditor")
    ok = http.post("/v1/audit/verify", headers=auditor).json()
    assert ok["ok"] is True and ok["entries"] == ok["checkpoints"] > 20 and ok["verified_by"] == "auditor-1"
    assert ok["public_key"] == cloud.units.store.audit.public_key_b64
    assert http.post("/v1/audit/verify", headers=scientist).status_code == 403
    # an entry changed behind the ledger's back: the verification names it, and is itself audited
    with cloud.units.store.sessions.begin() as s:
        row = s.scalar(select(Event).where(Event.kind == "update.accepted").order_by(Event.seq).limit(1))
        row.detail = {**row.detail, "epsilon": 0.01}
        tampered = row.seq
    bad = http.post("/v1/audit/verify", headers=COMPLIANCE).json()
    assert bad["ok"] is False and bad["first_bad_seq"] == tampered and f"entry {tampered}" in bad["error"]
    audited = [e for e in cloud.audit_entries() if e["kind"] == "audit.verified"]
    assert [(e["actor"], e["detail"]["ok"]) for e in audited] == [("auditor-1", True), ("compliance", False)]


def test_the_page_and_its_assets(cloud, http) -> None:  # noqa: ANN001
    page = http.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["cache-control"] == "no-store"
    assert "<script>" not in page.text and "test-admin-token" not in page.text  # no inline code, no data
    for name, kind in (("dashboard.js", "text/javascript"), ("charts.js", "text/javascript"),
                       ("dashboard.css", "text/css")):
        asset = http.get(f"/dashboard/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
    for bad in ("..%2Fviews.py", "__init__.py", ".hidden.js", "missing.js", "..%2F..%2Fapp.py", "%2Fetc%2Fpasswd"):
        assert http.get(f"/dashboard/static/{bad}").status_code == 404, bad
    # the token travels only as a header: no route reads it from a query string
    assert http.get("/v1/dashboard/session", params={"token": "test-admin-token"}).status_code == 401
    assert http.get("/v1/dashboard/session", headers=ADMIN).json()["role"] == "admin"
