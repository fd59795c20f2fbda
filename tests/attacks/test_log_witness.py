"""Defect 10 (issue 14): checkpoints anchored nowhere outside the database.

A host compromise that holds the log key can rewrite history and re-sign every checkpoint: `wearfed audit verify` on
the database alone passes (it trusts what it reads), and before this change no node noticed. Now every node keeps the
last checkpoint it saw and checks an RFC 9162 consistency proof from it on each poll (gateway/witness.py): a rewrite
(fork) or a truncation (rollback) stops it loudly. Real `wearfed cloud serve` processes on a real SQLite file.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete, select, update

from cloud.audit import ORIGIN, row_bytes, verify_ledger
from cloud.engine import make_engine, make_sessionmaker
from cloud.record_db import CheckpointRow, Event
from federation.checkpoint import Checkpoint, sign_checkpoint
from federation.merkle import MerkleLog, extend_frontier, leaf_hash
from federation.signing import load_or_create_key
from gateway.cloud_client import CloudClient
from gateway.node import NodeConfig, ParticipantNode
from gateway.trainer import DPConfig
from gateway.witness import ALARM_FILE, LogWitness, LogWitnessAlarm
from tests.cloud.participants import ADMIN, issue_token
from tests.cloud.server import ServerProcess


def _grow(url: str, n: int) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        for i in range(n):
            issue_token(http, f"gw-{i}")


def _resign_from(db_url: str, state: Path, seq: int, **changes: object) -> None:
    """What an attacker holding the host does: rewrite entry `seq` and re-sign every checkpoint from it on with the
    log key found in the state directory."""
    sessions = make_sessionmaker(make_engine(db_url))
    key = load_or_create_key(state / "audit-log-key.pem")
    with sessions.begin() as s:
        s.execute(update(Event).where(Event.seq == seq).values(**changes))
    with sessions.begin() as s:
        events = s.scalars(select(Event).order_by(Event.seq)).all()
        tree, frontier = MerkleLog(), []
        for e in events:
            h = leaf_hash(row_bytes(e))
            frontier = extend_frontier(frontier, tree.size, h)
            tree.append_leaf_hash(h)
            if e.seq >= seq:
                cp = Checkpoint(origin=ORIGIN, tree_size=tree.size, root_hash=tree.root())
                s.execute(update(CheckpointRow).where(CheckpointRow.tree_size == tree.size).values(
                    body=cp.body().decode(), signature=base64.b64encode(sign_checkpoint(cp, key)).decode(),
                    frontier=[f.hex() for f in frontier]))


def _truncate(db_url: str, keep: int) -> None:
    sessions = make_sessionmaker(make_engine(db_url))
    with sessions.begin() as s:
        s.execute(delete(Event).where(Event.seq >= keep))
        s.execute(delete(CheckpointRow).where(CheckpointRow.tree_size > keep))


async def _check(url: str, witness: LogWitness) -> bool:
    cloud = CloudClient(url, attempts=2)
    try:
        return await witness.check(cloud, force=True)
    finally:
        await cloud.aclose()


@pytest.fixture
def cloud_files(tmp_path: Path):  # noqa: ANN201
    return f"sqlite:///{tmp_path / 'cloud.db'}", tmp_path / "state"


def test_a_rewritten_and_resigned_history_stops_every_witness(tmp_path: Path, cloud_files) -> None:  # noqa: ANN001
    db_url, state = cloud_files
    server = ServerProcess(db_url=db_url, state_dir=state, log=tmp_path / "cloud-1.log")
    witness = LogWitness(tmp_path / "gw-1", node_id="gw-1")
    try:
        _grow(server.url, 4)
        assert asyncio.run(_check(server.url, witness))
        first = witness.seen.tree_size
        _grow(server.url, 3)
        assert asyncio.run(_check(server.url, witness))  # an honest extension: consistency proof verifies
        assert witness.seen.tree_size > first
    finally:
        server.stop()
    _resign_from(db_url, state, first - 2, actor="mallory")
    verify_ledger(make_sessionmaker(make_engine(db_url)))  # the database alone cannot tell: it verifies
    server = ServerProcess(db_url=db_url, state_dir=state, log=tmp_path / "cloud-2.log")
    try:
        with pytest.raises(LogWitnessAlarm, match="fork"):
            asyncio.run(_check(server.url, witness))
        alarm = json.loads((tmp_path / "gw-1" / ALARM_FILE).read_text())
        assert alarm["kind"] == "fork" and alarm["last_seen"]["tree_size"] == witness.seen.tree_size
        with pytest.raises(LogWitnessAlarm, match="operator"):  # stays stopped, also for a new process
            asyncio.run(_check(server.url, LogWitness(tmp_path / "gw-1", node_id="gw-1")))
    finally:
        server.stop()


def test_a_truncated_log_is_a_rollback(tmp_path: Path, cloud_files) -> None:  # noqa: ANN001
    db_url, state = cloud_files
    server = ServerProcess(db_url=db_url, state_dir=state, log=tmp_path / "cloud-1.log")
    witness = LogWitness(tmp_path / "gw-1", node_id="gw-1")
    try:
        _grow(server.url, 3)
        assert asyncio.run(_check(server.url, witness))
    finally:
        server.stop()
    _truncate(db_url, witness.seen.tree_size - 3)
    server = ServerProcess(db_url=db_url, state_dir=state, log=tmp_path / "cloud-2.log")
    try:
        with pytest.raises(LogWitnessAlarm, match="rollback"):
            asyncio.run(_check(server.url, witness))
    finally:
        server.stop()


def test_a_log_under_another_key_and_a_pinned_key(tmp_path: Path, cloud_files) -> None:  # noqa: ANN001
    db_url, state = cloud_files
    server = ServerProcess(db_url=db_url, state_dir=state, log=tmp_path / "cloud.log")
    try:
        key = httpx.get(f"{server.url}/v1/log/checkpoint", timeout=30).json()["public_key"]
        assert asyncio.run(_check(server.url, LogWitness(tmp_path / "a", node_id="a", pinned_key=key)))
        other = base64.b64encode(bytes(range(32))).decode()
        with pytest.raises(LogWitnessAlarm, match="key"):
            asyncio.run(_check(server.url, LogWitness(tmp_path / "b", node_id="b", pinned_key=other)))
    finally:
        server.stop()


def test_the_node_stops_answering_and_says_so(tmp_path: Path, cloud_files) -> None:  # noqa: ANN001
    """A participant node (real ParticipantNode.run) on a forked log returns from its loop by itself, its status
    shows the alarm, and no round is answered."""
    db_url, state = cloud_files
    server = ServerProcess(db_url=db_url, state_dir=state, log=tmp_path / "cloud-1.log")
    with httpx.Client(base_url=server.url, timeout=30) as http:
        token = issue_token(http, "gw-1")
    cfg = NodeConfig(participant_id="gw-1", kind="gateway", cloud_url=server.url, state_dir=tmp_path / "gw-1",
                     enroll_token=token, dp=DPConfig(accountant="rdp"), poll_seconds=0.1)
    try:
        async def enrolled() -> None:
            node = ParticipantNode(cfg, lambda _c: ([], []))
            await node.enroll()
            assert await node.witness.check(node.cloud, force=True)
            await node.aclose()

        asyncio.run(enrolled())
    finally:
        server.stop()
    _resign_from(db_url, state, 3, actor="mallory")
    server = ServerProcess(db_url=db_url, state_dir=state, log=tmp_path / "cloud-2.log", port=server.port)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.post("/v1/rounds", json={"quorum": 2, "deadline_s": 60}, headers=ADMIN).status_code == 409

        async def run() -> dict:
            node = ParticipantNode(cfg, lambda _c: ([], []))
            stop = asyncio.Event()
            await asyncio.wait_for(node.run(stop), timeout=60)  # returns by itself: nobody sets `stop`
            status = node.status()
            await node.aclose()
            return status

        status = asyncio.run(run())
    finally:
        server.stop()
    assert status["log_witness"]["alarm"]["kind"] == "fork" and status["answered"] == {}
