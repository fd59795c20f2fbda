"""Issue 18, a node that stops checking checkpoints: nodes acknowledge the checkpoints their witness verified
(``POST /v1/log/witness``, signed); a participant that submits an update while its last acknowledgement is stale (or
missing) raises one compliance alert per lapse, audited, and with ``witness_hold`` its update is refused until it
checks again. Against a real uvicorn cloud: fake nodes for exact control of the log's growth, and real participant
nodes (`gateway.node.ParticipantNode`, DP-SGD training, their own witness) over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloud.audit import verify_ledger
from federation.checkpoint import Checkpoint
from tests.cloud.participants import (
    ADMIN,
    COMPLIANCE,
    FakeNode,
    assert_reason,
    expire,
    open_round,
    random_delta,
    wait_state,
)
from tests.conftest import ADMIN_TOKEN, COMPLIANCE_TOKEN, ENROLL_TOKEN, CloudHandle, serve_app


@contextlib.contextmanager
def witness_cloud(tmp_path: Path, db_url: str, **witness: object) -> Iterator[CloudHandle]:
    """The cloud with the shipped intrusion thresholds, the witness settings overridden (rate limits off)."""
    from cloud.app import CloudSettings, create_app
    from cloud.intrusion_config import load_config
    from cloud.throttle import Limits

    settings = CloudSettings(db_url=db_url, state_dir=tmp_path / "cloud-state", admin_token=ADMIN_TOKEN,
                             compliance_token=COMPLIANCE_TOKEN, dev_insecure_custodian=True, tick_seconds=0.1,
                             limits=Limits(requests_per_s=0, auth_failures=10**9), intrusion=load_config(**witness))
    app = create_app(settings)
    app.state.cloud.participants.issue_enrollment_token("test-fixture", token=ENROLL_TOKEN, uses=100)
    with serve_app(app) as url:
        yield CloudHandle(url, app, settings.state_dir, db_url)


def _alerts(http: httpx.Client, kind: str) -> list[dict]:
    return [a for a in http.get("/v1/privacy/alerts", headers=COMPLIANCE).json() if a["kind"] == kind]


def _entries(http: httpx.Client, kind: str) -> list[dict]:
    return [e for e in http.get("/v1/audit/entries", headers=COMPLIANCE, params={"limit": 10_000}).json()
            if e["kind"] == kind]


def test_a_node_whose_checks_fall_behind_is_flagged_once_per_lapse(tmp_path: Path, db_url: str) -> None:
    with witness_cloud(tmp_path, db_url, witness_max_age_s=0, witness_max_behind=40) as cloud, \
            httpx.Client(base_url=cloud.url, timeout=30) as http:
        nodes = [FakeNode(http, f"gw-{i}") for i in range(1, 5)]
        for n in nodes:
            assert n.enroll().status_code == 201 and n.acknowledge().status_code == 200
        honest, lapsed = nodes[:3], nodes[3]
        for _ in range(15):  # the log moves on: the honest witnesses keep checking (each check is an entry)
            for n in honest:
                assert n.acknowledge().status_code == 200
        rid = open_round(http, nodes=nodes, deadline_s=600)
        for n in honest:  # an honest node checks right before it answers
            assert n.acknowledge().json()["behind"] <= 1
        forged = honest[0].submission(rid, random_delta(0), n_samples=50)
        forged["envelope"]["participant"] = "gw-4"  # a forger's update says nothing about gw-4's witness
        assert lapsed.submit(rid, forged).status_code == 401
        assert _alerts(http, "intrusion.witness_stale") == []
        for i, n in enumerate(nodes):
            assert n.submit(rid, n.submission(rid, random_delta(i), n_samples=50)).status_code == 200
        assert wait_state(http, rid, ("completed",), nodes=nodes, timeout=300)["state"] == "completed"
        [alert] = _alerts(http, "intrusion.witness_stale")
        assert alert["participant"] == "gw-4" and alert["detail"]["held"] is False
        assert "checkpoints behind the log, more than 40" in alert["detail"]["reason"]
        [entry] = _entries(http, "intrusion.detected")
        assert entry["detail"]["rule"] == "witness_stale" and entry["detail"]["participant"] == "gw-4"
        # still lapsed next round: no second alert for the same lapse; after a check, a new lapse alerts again
        rid2 = open_round(http, nodes=nodes, deadline_s=600)
        assert lapsed.submit(rid2, lapsed.submission(rid2, random_delta(3), n_samples=50)).status_code == 200
        assert len(_alerts(http, "intrusion.witness_stale")) == 1
        witnesses = {w["participant"]: w for w in http.get("/v1/intrusion", headers=COMPLIANCE).json()["witnesses"]}
        assert witnesses["gw-4"]["behind"] > 40 and witnesses["gw-4"]["stale_alerted_at"]
        assert all(witnesses[n.id]["stale_alerted_at"] is None for n in honest)
        assert lapsed.acknowledge().status_code == 200
        assert http.get("/v1/intrusion", headers=COMPLIANCE).json()["witnesses"][3]["stale_alerted_at"] is None
        assert verify_ledger(cloud.app.state.cloud.store.sessions).entries > 0


def test_acknowledgements_that_do_not_fit_the_log_are_refused(tmp_path: Path, db_url: str) -> None:
    with witness_cloud(tmp_path, db_url) as cloud, httpx.Client(base_url=cloud.url, timeout=30) as http:
        node, other = FakeNode(http, "gw-1"), FakeNode(http, "gw-2")
        assert node.enroll().status_code == 201
        first = Checkpoint.from_body(http.get("/v1/log/checkpoint").json()["body"].encode())
        good = node.acknowledge(tree_size=first.tree_size, root=first.root_hash.hex())
        assert good.status_code == 200 and good.json()["behind"] == 1  # its own acknowledgement is one entry
        size = first.tree_size
        assert_reason(other.acknowledge(), 403, "not enrolled")
        forged = {"participant": "gw-1", "tree_size": size, "root": "ab" * 32, "checked_at": time.time(),
                  "signature": "A" * 88}
        assert http.post("/v1/log/witness", json=forged).status_code == 401
        assert http.post("/v1/log/witness", json={**forged, "root": "XYZ"}).status_code == 422
        assert http.post("/v1/log/witness", json={**forged, "tree_size": 0}).status_code == 422
        assert_reason(node.acknowledge(tree_size=10**6, root="ab" * 32), 409, "no checkpoint of 1000000 entries")
        assert_reason(node.acknowledge(tree_size=size, root="ab" * 32), 409, "issued no checkpoint")
        # evidence either way: another history (or a longer one, since truncated) shown to gw-1, or gw-1 lying
        beyond, mismatch = _alerts(http, "intrusion.witness_mismatch")
        assert (beyond["detail"]["tree_size"], beyond["detail"]["log_root"]) == (10**6, None)
        assert mismatch["detail"]["acknowledged_root"] == "ab" * 32
        assert mismatch["detail"]["log_root"] == first.root_hash.hex()
        newest = node.acknowledge().json()["tree_size"]
        late = node.acknowledge(tree_size=size, root=first.root_hash.hex())  # an older check, delivered late
        assert late.status_code == 200 and late.json()["tree_size"] == newest  # changes nothing
        assert http.get("/v1/intrusion", headers=COMPLIANCE).json()["witnesses"][0]["tree_size"] == newest
        kinds = [e["kind"] for e in http.get("/v1/audit/entries", headers=COMPLIANCE).json()]
        assert kinds.count("witness.acknowledged") == 2 and kinds.count("witness.rejected") >= 2


# -- real participant nodes ------------------------------------------------------------------------------------


def _real_node(cloud: CloudHandle, tmp_path: Path, pid: str):  # noqa: ANN202 - a ParticipantNode
    from gateway.node import NodeConfig, ParticipantNode
    from gateway.trainer import DPConfig
    from tests.gateway.test_node import windows

    cfg = NodeConfig(participant_id=pid, kind="gateway", cloud_url=cloud.url, state_dir=tmp_path / pid,
                     enroll_token=ENROLL_TOKEN, dp=DPConfig(epsilon_cap=10.0, accountant="rdp"),
                     privacy_rng="simulation", seed=1, poll_seconds=0.1, witness_interval_s=0.5)
    return ParticipantNode(cfg, windows(pid))


def _stop_checking(node) -> None:  # noqa: ANN001
    """What a node whose operator disabled its witness does: it never checks (nor acknowledges) a checkpoint."""
    async def no_check(*_a: object, **_k: object) -> bool:
        return True

    node.witness.check = no_check


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_real_nodes_an_unchecking_node_is_held_and_honest_ones_are_untouched(tmp_path: Path, db_url: str) -> None:
    with witness_cloud(tmp_path, db_url, witness_hold=True) as cloud, \
            httpx.Client(base_url=cloud.url, timeout=30) as http:
        nodes = [_real_node(cloud, tmp_path, f"gw-{i}") for i in range(1, 5)]
        rogue = nodes[3]
        _stop_checking(rogue)

        async def scenario() -> tuple[dict, dict]:
            stop = asyncio.Event()
            tasks = [asyncio.create_task(n.run(stop)) for n in nodes]
            try:
                while not all(n.enrolled for n in nodes):
                    await asyncio.sleep(0.1)
                first = await asyncio.to_thread(_round, cloud, http, rogue, held=True)
                del rogue.witness.check  # the operator turns checking back on: the lapse ends with its next check
                second = await asyncio.to_thread(_round, cloud, http, rogue, held=False)
            finally:
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
                for n in nodes:
                    await n.aclose()
            return first, second

        first, second = asyncio.run(scenario())
        assert [u["participant"] for u in first["updates"]] == ["gw-1", "gw-2", "gw-3"]
        assert [u["participant"] for u in second["updates"]] == ["gw-1", "gw-2", "gw-3", "gw-4"]
        [alert] = _alerts(http, "intrusion.witness_stale")
        assert alert["participant"] == "gw-4" and alert["detail"]["held"] is True
        assert "never acknowledged a checkpoint" in alert["detail"]["reason"]
        held = _entries(http, "update.held")
        assert held and all(e["actor"] == "gw-4" and "witness_stale" in e["detail"]["reason"] for e in held)
        assert "held by intrusion response (witness_stale)" in rogue.state.answered[str(first["round"])]
        witnesses = {w["participant"]: w for w in http.get("/v1/intrusion", headers=COMPLIANCE).json()["witnesses"]}
        assert all(witnesses[f"gw-{i}"]["tree_size"] for i in range(1, 5))  # gw-4 too, once it checked again
        assert verify_ledger(cloud.app.state.cloud.store.sessions).entries > 0


def _round(cloud: CloudHandle, http: httpx.Client, rogue, *, held: bool) -> dict:  # noqa: ANN001
    rid = http.post("/v1/rounds", json={"quorum": 3, "deadline_s": 600}, headers=ADMIN).json()["round"]
    deadline = time.time() + 300
    while time.time() < deadline:
        report = http.get(f"/v1/rounds/{rid}", headers=ADMIN).json()
        if report["state"] != "collecting":
            return report
        if held and len(report["updates"]) == 3 and str(rid) in rogue.state.answered:
            expire(cloud, rid)  # the held node never answers: close the round on the three honest updates
        time.sleep(0.2)
    raise AssertionError(f"round {rid} did not finish: {report}")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_lapsed_witness_behind_a_region_relay_holds_its_aggregate(tmp_path: Path, db_url: str) -> None:
    """The rule also covers updates a region forwards (before, only the direct route applied it): with
    ``witness_hold`` one lapsed member holds the aggregate, named in the answer; once it checks, the same aggregate
    is accepted whole."""
    from federation import ckks
    from tests.cloud.regions import aggregate_body, enroll_region

    with witness_cloud(tmp_path, db_url, witness_hold=True) as cloud, \
            httpx.Client(base_url=cloud.url, timeout=30) as http:
        cloud.units.regions.audit_rate = 0.0
        ctx = ckks.load_context(http.get("/v1/context").content)
        nodes = [FakeNode(http, f"gw-{i}") for i in range(1, 4)]
        for n in nodes:
            assert n.enroll().status_code == 201
        key = enroll_region(http, "r-1")
        rid = open_round(http, nodes=nodes, deadline_s=600)
        for n in nodes[:2]:
            assert n.acknowledge().status_code == 200
        members = [n.submission(rid, random_delta(i), n_samples=40 + i, region="r-1") for i, n in enumerate(nodes)]
        body = aggregate_body(key, "r-1", rid, members, ctx=ctx)
        assert_reason(http.post(f"/v1/rounds/{rid}/region-aggregates", json=body), 409,
                      "held by intrusion response (witness_stale)")
        [alert] = _alerts(http, "intrusion.witness_stale")
        assert alert["participant"] == "gw-3" and alert["detail"]["held"] is True
        assert [e["actor"] for e in _entries(http, "update.held")] == ["gw-3"]
        assert nodes[2].acknowledge().status_code == 200
        ok = http.post(f"/v1/rounds/{rid}/region-aggregates", json=body)
        assert ok.status_code == 200 and ok.json()["status"] == "accepted", ok.text
        assert sorted(ok.json()["contributors"]) == ["gw-1", "gw-2", "gw-3"]
