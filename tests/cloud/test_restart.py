"""Restart safety: `kill -9` of a real `wearfed cloud serve` at several points of a round, then a restart.

The crash points are named by the test-only launcher tests/cloud/crashing_cloud.py, which sends
SIGKILL to the server itself at that exact point, so each test is deterministic. After the restart the round
must complete with every accepted update counted exactly once and the result equal to plaintext FedAvg.
"""

from __future__ import annotations

import base64
import contextlib
import signal
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from cloud.audit import verify_ledger
from cloud.db import Update
from cloud.engine import make_engine, make_sessionmaker
from cloud.record_db import ModelVersion, PrivacySpend
from tests.cloud.participants import ADMIN, FakeNode, open_round, random_delta, wait_state
from tests.cloud.server import ServerProcess

COUNTS = [100, 300, 600]


SLOW, PG = pytest.mark.slow, pytest.mark.postgres
CASES = [  # two in the default suite, every point on both databases under -m slow
    pytest.param("sqlite", "after-update:3"),
    pytest.param("postgres", "decrypting", marks=PG),
    pytest.param("sqlite", "after-update:1", marks=SLOW),
    pytest.param("sqlite", "aggregating", marks=SLOW),
    pytest.param("sqlite", "decrypting", marks=SLOW),
    pytest.param("postgres", "after-update:1", marks=[SLOW, PG]),
    pytest.param("postgres", "after-update:3", marks=[SLOW, PG]),
    pytest.param("postgres", "aggregating", marks=[SLOW, PG]),
]


@pytest.mark.parametrize(("db_url", "point"), CASES, indirect=["db_url"])
def test_kill_9_then_restart_completes_the_round_once(tmp_path: Path, db_url: str, point: str) -> None:
    state, log = tmp_path / "state", tmp_path / "cloud.log"
    server = ServerProcess(db_url=db_url, state_dir=state, log=log, crash_at=point)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            nodes = [FakeNode(http, f"gw-{i}") for i in (1, 2, 3)]
            for n in nodes:
                assert n.enroll().status_code == 201
            rid = open_round(http, quorum=3, deadline_s=600)
            deltas = [random_delta(i) for i in range(3)]
            bodies = [n.submission(rid, d, n_samples=c) for n, d, c in zip(nodes, deltas, COUNTS, strict=True)]
            answered = []
            for n, body in zip(nodes, bodies, strict=True):
                try:
                    answered.append(n.submit(rid, body).status_code)
                except httpx.TransportError:
                    break  # the server died while handling this one
            else:  # the nodes sign the view and reveal their shares: aggregation (and the crash point) follows
                with contextlib.suppress(httpx.TransportError):
                    wait_state(http, rid, ("completed",), timeout=60)
        assert server.wait_killed() == -signal.SIGKILL
    finally:
        server.stop()

    server = ServerProcess(db_url=db_url, state_dir=state, log=log)  # no crash hook this time
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for n, body in zip(nodes, bodies, strict=True):  # every node (re)sends: the outbox after a crash
                n.client = http
                resp = http.post(f"/v1/rounds/{rid}/updates", json=body)
                if resp.status_code != 200:  # only possible once the round has closed without it
                    assert resp.status_code == 409 and "not collecting" in resp.json()["detail"], resp.text
            report = wait_state(http, rid, ("completed", "failed"), timeout=60)
            assert report["state"] == "completed", report
            contributors = report["contributors"]
            latest = http.get("/v1/models/latest", headers=ADMIN).json()
            base = np.frombuffer(base64.b64decode(http.get("/v1/models/0").json()["weights"]), dtype=np.float32)
    finally:
        server.stop()
    idx = [int(p.split("-")[1]) - 1 for p in contributors]
    assert len(idx) == 3  # every resend counted once
    got = np.frombuffer(base64.b64decode(latest["weights"]), dtype=np.float32)
    expected = base + sum(deltas[i] * COUNTS[i] for i in idx) / sum(COUNTS[i] for i in idx)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    sessions = make_sessionmaker(make_engine(db_url))
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion).where(ModelVersion.round_id == rid)) == 1
        assert s.scalar(select(func.count()).select_from(Update).where(Update.round_id == rid)) == len(idx) or \
            point.startswith("after-update")
        per_participant = s.execute(select(PrivacySpend.participant, func.count()).group_by(
            PrivacySpend.participant)).all()
        assert all(c == 1 for _p, c in per_participant)  # nothing counted twice
        assert latest["version"] == 1 and latest["n_samples"] == sum(COUNTS[i] for i in idx)
    assert verify_ledger(sessions).entries > 10
    assert ADMIN  # the bootstrap admin token survived the restart (used by wait_state)
