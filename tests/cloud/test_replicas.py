"""Cloud replicas: two real `wearfed cloud serve` processes on one real PostgreSQL serve one federation.

Participants are spread over both replicas (as a load balancer would) and submit at once; every round completes
exactly once (one state transition of each kind, one aggregate, one model), the audit ledger is one verified hash
chain, and a replica SIGKILLed mid-round (while updates arrive, or holding the aggregation of the round) changes
nothing: the other replica finishes the round with every acknowledged update counted once.
"""

from __future__ import annotations

import base64
import contextlib
import signal
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from cloud.audit import verify_ledger
from cloud.db import Update
from cloud.engine import make_engine, make_sessionmaker
from cloud.record_db import Event, ModelVersion, PrivacySpend
from tests.cloud.participants import ADMIN, FakeNode, drive, random_delta, wait_state
from tests.cloud.server import ServerProcess
from tests.conftest import _postgres_url

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from _postgres_url()


@contextlib.contextmanager
def replicas(pg: str, tmp: Path, *crash: str | None) -> Iterator[list[ServerProcess]]:
    """Replicas on one database and one state directory (the shared key material a deployment mounts); the first
    starts alone so it creates the keys, the others then start."""
    state, procs = tmp / "state", []
    try:
        for i, point in enumerate(crash):
            procs.append(ServerProcess(db_url=pg, state_dir=state, log=tmp / f"replica-{i}.log", crash_at=point))
        yield procs
    finally:
        for p in procs:
            p.stop()


@contextlib.contextmanager
def clients(procs: list[ServerProcess]) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    with httpx.Client(base_url=procs[0].url, timeout=120) as a, httpx.Client(base_url=procs[1].url, timeout=120) as b:
        yield a, b


def _enroll(clients: list[httpx.Client], n: int) -> list[FakeNode]:
    nodes = [FakeNode(clients[i % len(clients)], f"gw-{i:02d}") for i in range(n)]
    for node in nodes:
        assert node.enroll().status_code == 201
    return nodes


def open_round(http: httpx.Client, *, n: int, nodes: list[FakeNode]) -> int:
    """Open a round of `n` and let the nodes advertise keys and share seeds, each through its own replica (2 cores
    shared with other work: generous time limits, no timing asserted)."""
    resp = http.post("/v1/rounds", json={"quorum": n, "deadline_s": 900, "local_epochs": 2},  # the fake STEP
                     headers=ADMIN)
    assert resp.status_code == 201, resp.text
    rid = resp.json()["round"]
    assert drive(http, rid, until=("input",), nodes=nodes, timeout=240).get("secagg_phase") == "input"
    return rid


def _submit_all(nodes: list[FakeNode], rid: int, seed: int, counts: list[int]) -> dict[str, np.ndarray]:
    deltas = {n.id: random_delta(seed + i) for i, n in enumerate(nodes)}
    bodies = [n.submission(rid, deltas[n.id], n_samples=c) for n, c in zip(nodes, counts, strict=True)]
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:  # every participant at once, over both replicas
        codes = list(pool.map(lambda nb: nb[0].submit(rid, nb[1]).status_code, zip(nodes, bodies, strict=True)))
    assert codes == [200] * len(nodes), codes
    return deltas


def _check_round_once(pg: str, rid: int, n: int) -> None:
    sessions = make_sessionmaker(make_engine(pg))
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion).where(ModelVersion.round_id == rid)) == 1
        assert s.scalar(select(func.count()).select_from(Update).where(Update.round_id == rid)) == n
        spends = s.execute(select(PrivacySpend.participant, func.count()).where(PrivacySpend.round_id == rid)
                           .group_by(PrivacySpend.participant)).all()
        assert len(spends) == n and all(c == 1 for _p, c in spends)
        events = [e for e in s.scalars(select(Event).order_by(Event.seq)) if (e.detail or {}).get("round") == rid]
    states = Counter(e.detail["state"] for e in events if e.kind == "round.state")
    assert states == {"collecting": 1, "aggregating": 1, "decrypting": 1, "completed": 1}, states
    kinds = Counter(e.kind for e in events)
    assert kinds["aggregate.computed"] == 1 and kinds["aggregate.decrypted"] == 1, kinds
    assert kinds["update.accepted"] == n, kinds


def _fedavg(http: httpx.Client, deltas: dict[str, np.ndarray], counts: dict[str, int], version: int) -> None:
    def weights(v: int) -> np.ndarray:
        doc = http.get(f"/v1/models/{v}", headers=ADMIN).json()
        return np.frombuffer(base64.b64decode(doc["weights"]), dtype=np.float32)

    base, got = weights(0), weights(version)
    expected = base + sum(deltas[p] * counts[p] for p in deltas) / sum(counts.values())
    np.testing.assert_allclose(got, expected, atol=1e-5)


SLOW_50 = pytest.param(50, 2, marks=[pytest.mark.slow, pytest.mark.timeout(2400)])  # about 10 minutes here


@pytest.mark.parametrize(("n", "rounds"), [(10, 1), SLOW_50])
def test_two_replicas_complete_every_round_exactly_once(tmp_path: Path, pg_url: str, n: int, rounds: int) -> None:
    with replicas(pg_url, tmp_path, None, None) as procs, clients(procs) as (a, b):
        nodes = _enroll([a, b], n)
        for rnd in range(rounds):
            rid = open_round(a if rnd == 0 else b, n=n, nodes=nodes)
            counts = [50 + 7 * i for i in range(n)]
            deltas = _submit_all(nodes, rid, seed=100 * rnd, counts=counts)
            report = wait_state(b, rid, ("completed", "failed"), timeout=300, nodes=nodes)
            assert report["state"] == "completed", report
            assert sorted(report["contributors"]) == sorted(n.id for n in nodes)
            _check_round_once(pg_url, rid, n)
            _fedavg(a, deltas, {nd.id: c for nd, c in zip(nodes, counts, strict=True)},
                    report["result_model_version"])
    report = verify_ledger(make_sessionmaker(make_engine(pg_url)))  # one chain, every checkpoint, every state row
    assert report.entries > 20 * n * rounds // 10


def test_replica_killed_while_updates_arrive_changes_nothing(tmp_path: Path, pg_url: str) -> None:
    n = 10
    with replicas(pg_url, tmp_path, None, None) as procs, clients(procs) as (a, b):
        nodes = _enroll([a, b], n)
        rid = open_round(a, n=n, nodes=nodes)
        counts = {nd.id: 40 + 3 * i for i, nd in enumerate(nodes)}
        deltas = {nd.id: random_delta(7 + i) for i, nd in enumerate(nodes)}
        bodies = {nd.id: nd.submission(rid, deltas[nd.id], n_samples=counts[nd.id]) for nd in nodes}
        acked = [nd.id for nd in nodes[:5] if nd.submit(rid, bodies[nd.id]).status_code == 200]
        assert len(acked) == 5
        procs[1].proc.send_signal(signal.SIGKILL)  # replica b dies mid-round, holding half the participants
        assert procs[1].wait_killed() == -signal.SIGKILL
        for nd in nodes:  # the load balancer sends everyone to a; every node (re)sends what it has not seen settled
            nd.client = a
        for nd in nodes:
            resp = nd.submit(rid, bodies[nd.id])
            assert resp.status_code == 200, resp.text
            assert resp.json()["duplicate"] == (nd.id in acked)  # an acknowledged update was kept, and kept once
        report = wait_state(a, rid, ("completed", "failed"), timeout=300, nodes=nodes)
        assert report["state"] == "completed", report
        _check_round_once(pg_url, rid, n)
        _fedavg(a, deltas, counts, report["result_model_version"])
    verify_ledger(make_sessionmaker(make_engine(pg_url)))


def test_replica_killed_holding_the_aggregation_is_taken_over(tmp_path: Path, pg_url: str) -> None:
    """Replica 1 dies (SIGKILL, tests/cloud/crashing_cloud.py) as it starts summing the round it claimed; replica 0,
    which waits 3 s before claiming so the other claims first, takes the round over once the claim dies with its
    connection."""
    n = 10
    with replicas(pg_url, tmp_path, "late-claim:3", "aggregating") as procs, clients(procs) as (a, b):
        nodes = _enroll([a, b], n)
        rid = open_round(a, n=n, nodes=nodes)
        counts = [30 + i for i in range(n)]
        deltas = _submit_all(nodes, rid, seed=11, counts=counts)
        with contextlib.suppress(httpx.TransportError, AssertionError):  # b dies once the round is ready
            wait_state(b, rid, ("completed",), timeout=60, nodes=nodes)
        assert procs[1].wait_killed() == -signal.SIGKILL
        report = wait_state(a, rid, ("completed", "failed"), timeout=120, nodes=[nd for nd in nodes if nd.client is a])
        assert report["state"] == "completed", report
        _check_round_once(pg_url, rid, n)
        _fedavg(a, deltas, {nd.id: c for nd, c in zip(nodes, counts, strict=True)}, report["result_model_version"])
    verify_ledger(make_sessionmaker(make_engine(pg_url)))
