"""Hierarchical aggregation end to end: a real uvicorn cloud, two real `wearfed region serve` processes and
participants speaking the real protocol (secure aggregation, CKKS, signatures). Rounds mixing two regions and a
direct participant, with and without the cloud's audit of the region inputs, give the plaintext FedAvg model; the
relays refuse what is not theirs; the ledger verifies; the CLI's bad input exits 2 with the reason."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from cloud.audit import verify_ledger
from cloud.engine import make_engine, make_sessionmaker
from federation.cli import main
from tests.cloud.participants import FakeNode, assert_reason, open_round, random_delta, wait_state
from tests.cloud.regions import relay_process, wearfed
from tests.cloud.test_secagg import enrolled, weights

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _round(cloud, http: httpx.Client, nodes: list[FakeNode], routes: dict[str, str | None], urls: dict[str, str],  # noqa: ANN001
           *, audit_rate: float, seed: int) -> tuple[dict, dict[str, np.ndarray], list[int]]:
    """One round: each node submits to its region's relay (or the cloud); returns the report, deltas and counts."""
    cloud.units.regions.audit_rate = audit_rate
    base = http.get("/v1/models/promoted").json()["version"]
    rid = open_round(http, quorum=3)
    deltas, counts = {}, []
    for i, node in enumerate(nodes):
        deltas[node.id], n = random_delta(seed + i), 50 + 25 * i
        counts.append(n)
        where = routes[node.id]
        body = node.submission(rid, deltas[node.id], n_samples=n, base_version=base, region=where)
        resp = httpx.post(f"{urls[where]}/v1/rounds/{rid}/updates", json=body, timeout=60) if where \
            else node.submit(rid, body)
        assert resp.status_code == 200, resp.text
        assert not resp.json()["duplicate"]
        if where:  # a resend to the relay is acknowledged once; the node's privacy history goes on
            node.history = [tuple(h) for h in body["envelope"]["dp"]["history"]]
            again = httpx.post(f"{urls[where]}/v1/rounds/{rid}/updates", json=body, timeout=60)
            assert again.status_code == 200 and again.json()["duplicate"], again.text
    report = wait_state(http, rid, ("completed", "failed"), timeout=90)
    return report, deltas, counts


@pytest.mark.parametrize("audit_rate", [0.0, 1.0], ids=["unaudited", "audited"])
def test_a_round_through_two_region_relays_and_one_direct_participant_equals_fedavg(  # noqa: ANN001
        cloud, http, tmp_path, audit_rate: float) -> None:
    nodes = enrolled(http, 7)
    north, south = [n.id for n in nodes[:3]], [n.id for n in nodes[3:6]]
    routes = {**dict.fromkeys(north, "r-north"), **dict.fromkeys(south, "r-south"), nodes[6].id: None}
    with relay_process(tmp_path, http, cloud.url, "r-north", members=north) as n_relay, \
            relay_process(tmp_path, http, cloud.url, "r-south", members=south) as s_relay:
        n_url, urls = n_relay.url, {"r-north": n_relay.url, "r-south": s_relay.url}
        before = weights(http, "promoted")
        report, deltas, counts = _round(cloud, http, nodes, routes, urls, audit_rate=audit_rate, seed=10)
        assert report["state"] == "completed", report
        assert report["contributors"] == sorted(n.id for n in nodes)
        expected = before + sum(deltas[n.id] * c for n, c in zip(nodes, counts, strict=True)) / sum(counts)
        np.testing.assert_allclose(weights(http, report["result_model_version"]), expected, atol=1e-5)
        status = httpx.get(f"{n_url}/v1/status").json()["rounds"][str(report["round"])]
        assert status["forwarded"] == north and status["batches"][0]["status"] == "accepted"
        assert status["batches"][0]["audited"] is (audit_rate == 1.0)
        if audit_rate == 0.0:
            _relay_refusals(http, nodes, n_url)
    kinds = [e["kind"] for e in cloud.audit_entries()]
    assert kinds.count("region.enrolled") == 2 and kinds.count("region.aggregate.accepted") == 2
    assert kinds.count("region.audit.demanded") == kinds.count("region.audit.passed") == (2 if audit_rate else 0)
    verify_ledger(make_sessionmaker(make_engine(cloud.db_url)))  # chain, checkpoints and every state row


def _relay_refusals(http: httpx.Client, nodes: list[FakeNode], n_url: str) -> None:
    """The relay refuses what is not its to forward, with the reason (nothing reaches the cloud)."""
    rid = open_round(http, quorum=3)
    stray = nodes[6].submission(rid, random_delta(1), n_samples=10, region="r-south")
    assert_reason(httpx.post(f"{n_url}/v1/rounds/{rid}/updates", json=stray), 400,
                  "addressed to r-south, this is region r-north")
    outsider = nodes[6].submission(rid, random_delta(1), n_samples=10, region="r-north")
    assert_reason(httpx.post(f"{n_url}/v1/rounds/{rid}/updates", json=outsider), 403,
                  f"{nodes[6].id} is not a member of region r-north")
    forged = nodes[0].submission(rid, random_delta(1), n_samples=10, region="r-north")
    forged["signature"] = nodes[1].sign(forged["envelope"])
    assert_reason(httpx.post(f"{n_url}/v1/rounds/{rid}/updates", json=forged), 401,
                  f"not signed by {nodes[0].id}'s enrolled key")
    assert httpx.post(f"{n_url}/v1/rounds/{rid}/updates", content=b"{not json").status_code == 422
    direct = nodes[0].submission(rid, random_delta(1), n_samples=10, region="r-north")
    assert_reason(nodes[0].submit(rid, direct), 400, "addressed to region r-north: submit it to that region")


def test_a_relay_killed_before_forwarding_forwards_what_it_acknowledged_after_a_restart(cloud, http, tmp_path) -> None:  # noqa: ANN001
    nodes = enrolled(http, 3)
    members = [n.id for n in nodes]
    rid = open_round(http, quorum=3)
    bodies = [n.submission(rid, random_delta(i), n_samples=30 + i, region="r-1") for i, n in enumerate(nodes)]
    with relay_process(tmp_path, http, cloud.url, "r-1", members=members) as relay:
        for body in bodies[:2]:  # acknowledged, waiting for the third member
            assert httpx.post(f"{relay.url}/v1/rounds/{rid}/updates", json=body).status_code == 200
        relay.proc.kill()  # SIGKILL: no graceful hand-over
        relay.proc.wait(timeout=20)
        port = int(relay.url.rsplit(":", 1)[1])
    with relay_process(tmp_path, http, cloud.url, "r-1", members=members, port=port) as relay:
        again = httpx.post(f"{relay.url}/v1/rounds/{rid}/updates", json=bodies[0])  # a node's outbox resend
        assert again.status_code == 200 and again.json()["duplicate"], again.text
        assert httpx.post(f"{relay.url}/v1/rounds/{rid}/updates", json=bodies[2]).status_code == 200
        report = wait_state(http, rid, ("completed", "failed"), timeout=60)
        assert report["state"] == "completed" and report["contributors"] == sorted(members), report
        late = httpx.post(f"{relay.url}/v1/rounds/{rid}/updates", json=bodies[1])  # resent after forwarding
        assert late.status_code == 200 and late.json()["duplicate"], late.text
    kinds = [e["kind"] for e in cloud.audit_entries()]
    assert kinds.count("region.aggregate.accepted") == 1 and kinds.count("update.accepted") == 3


def test_region_serve_bad_input_exits_2_with_the_reason(cloud, http, tmp_path, capsys) -> None:  # noqa: ANN001
    state = str(tmp_path / "r")
    cases = [
        (["--id", "r-1", "--cloud", cloud.url, "--state-dir", state], "is not enrolled yet"),
        (["--id", "R 1", "--cloud", cloud.url, "--state-dir", state, "--enroll-token", "x"], "must match"),
        (["--id", "r-1", "--cloud", "ftp://x", "--state-dir", state, "--enroll-token", "x"], "must start with http"),
        (["--id", "r-1", "--cloud", cloud.url, "--state-dir", state, "--enroll-token", "x", "--flush-after", "0"],
         "flush_after_s must be positive"),
        (["--id", "r-1", "--cloud", cloud.url, "--state-dir", state, "--enroll-token", "nope"],
         "enrollment token is not valid"),
        (["--id", "r-1", "--cloud", cloud.url, "--state-dir", state, "--members", ","], "--members names no"),
    ]
    for args, fragment in cases:  # in this process: main() is what the console script runs
        assert main(["region", "serve", *args]) == 2, args
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err, (args, err)
    done = wearfed("region", "serve", "--id", "r-1", "--cloud", "http://127.0.0.1:9", "--state-dir", state,
                   "--enroll-token", "x")  # and once as a real process: an unreachable cloud
    assert done.returncode == 2 and "cannot reach the cloud" in done.stderr, done.stderr
