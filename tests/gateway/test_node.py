"""Participant nodes against the real aggregator: DP-SGD updates, privacy-cap refusals, crash-safe resubmission."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx

from device.sensor import synthetic_trace
from federation import dp_accounting
from federation.windows import windows_from_series
from gateway.node import NodeConfig, ParticipantNode
from gateway.state import NodeState
from gateway.trainer import DPConfig
from tests.conftest import ADMIN_TOKEN, ENROLL_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def windows(name: str):  # noqa: ANN201
    series = [synthetic_trace(seed=1, patient=f"{name}-{k}", start=1_767_225_600, days=1)[::2] for k in range(3)]
    x, y = windows_from_series([(t, g) for t, g in series])
    return lambda _cutoff: (x, y)


def node(cloud, tmp_path: Path, pid: str, *, cap: float = 10.0) -> ParticipantNode:  # noqa: ANN001
    cfg = NodeConfig(participant_id=pid, kind="gateway", cloud_url=cloud.url, state_dir=tmp_path / pid,
                     enroll_token=ENROLL_TOKEN, dp=DPConfig(epsilon_cap=cap, accountant="rdp"), seed=1)
    return ParticipantNode(cfg, windows(pid))


def test_round_with_a_node_at_its_privacy_cap(cloud, tmp_path: Path) -> None:  # noqa: ANN001
    nodes = [node(cloud, tmp_path, "gw-1"), node(cloud, tmp_path, "gw-2"), node(cloud, tmp_path, "gw-3", cap=0.5)]

    async def scenario() -> dict:
        for n in nodes:
            await n.enroll()
        async with httpx.AsyncClient(base_url=cloud.url, headers=ADMIN) as http:
            rnd = (await http.post("/v1/rounds", json={"quorum": 2, "deadline_s": 120})).json()
            await asyncio.gather(*(n.answer(rnd) for n in nodes))
            for _ in range(200):
                report = (await http.get(f"/v1/rounds/{rnd['round']}")).json()
                if report["state"] in ("completed", "failed"):
                    break
                await asyncio.sleep(0.05)
        for n in nodes:
            await n.aclose()
        return report

    report = asyncio.run(scenario())
    assert report["state"] == "completed"
    assert [u["participant"] for u in report["updates"]] == ["gw-1", "gw-2"]
    assert report["refusals"][0]["participant"] == "gw-3" and "privacy cap" in report["refusals"][0]["reason"]
    # the refusing node spent nothing; the others booked exactly one round, and the report says what the math says
    assert NodeState.load(tmp_path / "gw-3" / "node-state.json").history == []
    for u in report["updates"]:
        hist = NodeState.load(tmp_path / u["participant"] / "node-state.json").steps()
        assert len(hist) == 1
        recomputed = dp_accounting.epsilon(hist, delta=1e-5, accountant="rdp")
        assert abs(recomputed - u["dp"]["epsilon_cumulative"]) < 1e-9 and recomputed <= 10.0


def test_submission_survives_a_crash_between_training_and_sending(cloud, tmp_path: Path) -> None:  # noqa: ANN001
    async def scenario() -> tuple[dict, NodeState]:
        first, other = node(cloud, tmp_path, "gw-1"), node(cloud, tmp_path, "gw-2")
        await first.enroll()
        await other.enroll()
        async with httpx.AsyncClient(base_url=cloud.url, headers=ADMIN) as http:
            rnd = (await http.post("/v1/rounds", json={"quorum": 2, "deadline_s": 120})).json()

        async def lost_connection() -> None:
            raise ConnectionError("killed before the POST")

        first.flush_outbox = lost_connection  # the process dies after booking the spend, before sending
        with contextlib.suppress(ConnectionError):
            await first.answer(rnd)
        await first.aclose()
        crashed = NodeState.load(tmp_path / "gw-1" / "node-state.json")

        restarted = node(cloud, tmp_path, "gw-1")  # a new process on the same state directory
        await restarted.enroll()
        await restarted.flush_outbox()
        await restarted.flush_outbox()  # nothing left: no second POST
        await other.answer(rnd)
        await restarted.aclose()
        await other.aclose()
        return rnd, crashed

    rnd, crashed = asyncio.run(scenario())
    assert list(crashed.outbox) == [str(rnd["round"])] and len(crashed.history) == 1
    state = NodeState.load(tmp_path / "gw-1" / "node-state.json")
    assert state.outbox == {} and state.answered == {str(rnd["round"]): "submitted"}
    assert len(state.history) == 1  # privacy booked once
    report = httpx.get(f"{cloud.url}/v1/rounds/{rnd['round']}", headers=ADMIN).json()
    assert sorted(u["participant"] for u in report["updates"]) == ["gw-1", "gw-2"]
    assert report["state"] in ("collecting", "aggregating", "decrypting", "completed")
