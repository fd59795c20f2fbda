"""Participant nodes against the real aggregator: DP-SGD updates, privacy-cap refusals, crash-safe resubmission."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx
import numpy as np

from device.sensor import synthetic_trace
from federation import dp_accounting
from federation.windows import windows_from_series
from gateway.node import NodeConfig, ParticipantNode, next_poll
from gateway.state import NodeState
from gateway.trainer import DPConfig
from tests.conftest import ADMIN_TOKEN, ENROLL_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def windows(name: str):  # noqa: ANN201
    series = {f"{name}-{k}": synthetic_trace(seed=1, patient=f"{name}-{k}", start=1_767_225_600, days=1)[::2]
              for k in range(3)}
    w = windows_from_series({k: (t, g) for k, (t, g) in series.items()})
    return lambda _cutoff: w


def node(cloud, tmp_path: Path, pid: str, *, cap: float = 10.0) -> ParticipantNode:  # noqa: ANN001
    cfg = NodeConfig(participant_id=pid, kind="gateway", cloud_url=cloud.url, state_dir=tmp_path / pid,
                     enroll_token=ENROLL_TOKEN, dp=DPConfig(epsilon_cap=cap, accountant="rdp"),
                     privacy_rng="simulation", seed=1)
    return ParticipantNode(cfg, windows(pid))


async def serve_until(nodes: list[ParticipantNode], http: httpx.AsyncClient, round_id: int, *,
                      states: tuple[str, ...] = (), phase: str | None = None, polls: int = 600) -> dict:
    """Run each node's poll-and-serve step (what `ParticipantNode.run` loops on) until the round reaches a state or
    a secure-aggregation phase; with `phase`, nodes only take the secure-aggregation steps (no training)."""
    report: dict = {}
    for _ in range(polls):
        for n in nodes:
            rnd = await n.poll_round()
            if rnd is not None:
                await (n.secagg.step(rnd) if phase else n.serve_round(rnd))
        report = (await http.get(f"/v1/rounds/{round_id}")).json()
        if report["state"] in states or (phase and report.get("secagg_phase") == phase):
            return report
        await asyncio.sleep(0.05)
    raise AssertionError(f"round {round_id} never reached {states or phase}: {report}")


def test_round_with_a_node_at_its_privacy_cap(cloud, tmp_path: Path) -> None:  # noqa: ANN001
    nodes = [node(cloud, tmp_path, "gw-1"), node(cloud, tmp_path, "gw-2"), node(cloud, tmp_path, "gw-3"),
             node(cloud, tmp_path, "gw-4", cap=0.5)]

    async def scenario() -> dict:
        for n in nodes:
            await n.enroll()
        async with httpx.AsyncClient(base_url=cloud.url, headers=ADMIN) as http:
            rnd = (await http.post("/v1/rounds", json={"quorum": 3, "deadline_s": 120})).json()
            # gw-4 advertises keys and shares its seeds, then refuses at training: a dropout, recovered
            report = await serve_until(nodes, http, rnd["round"], states=("completed", "failed"))
        for n in nodes:
            await n.aclose()
        return report

    report = asyncio.run(scenario())
    assert report["state"] == "completed"
    assert [u["participant"] for u in report["updates"]] == ["gw-1", "gw-2", "gw-3"]
    assert report["refusals"][0]["participant"] == "gw-4" and "privacy cap" in report["refusals"][0]["reason"]
    # the refusing node spent nothing; the others booked exactly one round, and the report says what the math says
    assert NodeState.load(tmp_path / "gw-4" / "node-state.json").history == []
    for u in report["updates"]:
        hist = NodeState.load(tmp_path / u["participant"] / "node-state.json").steps()
        assert len(hist) == 1
        recomputed = dp_accounting.epsilon(hist, delta=1e-5, accountant="rdp")
        assert abs(recomputed - u["dp"]["epsilon_cumulative"]) < 1e-9 and recomputed <= 10.0
        assert u["dp"]["unit"] == "patient" and u["n_samples"] == 3  # three devices: three patients
        assert hist[0][1] == 1.0  # 3 patients, 64 expected per step: every patient in every step


def test_submission_survives_a_crash_between_training_and_sending(cloud, tmp_path: Path) -> None:  # noqa: ANN001
    async def scenario() -> tuple[dict, NodeState]:
        first, other = node(cloud, tmp_path, "gw-1"), node(cloud, tmp_path, "gw-2")
        third = node(cloud, tmp_path, "gw-3")  # a round has at least 3 contributors
        for n in (first, other, third):
            await n.enroll()
        http = httpx.AsyncClient(base_url=cloud.url, headers=ADMIN)
        rid = (await http.post("/v1/rounds", json={"quorum": 3, "deadline_s": 120})).json()["round"]
        await serve_until([first, other, third], http, rid, phase="input")  # keys advertised, seeds shared
        rnd = await first.poll_round()

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
        await third.answer(rnd)
        secrets = tmp_path / "gw-1" / "secagg" / f"round-{rid}.json"
        assert secrets.stat().st_mode & 0o777 == 0o600  # the round's mask seeds and keys: owner only
        # the restarted node signs the view and reveals its shares from the round's secrets kept on disk
        await serve_until([restarted, other, third], http, rid, states=("completed", "failed"))
        await restarted.serve_round(await restarted.poll_round())  # the round is over: its secrets are deleted
        assert not secrets.exists()
        await http.aclose()
        for n in (restarted, other, third):
            await n.aclose()
        return rnd, crashed

    rnd, crashed = asyncio.run(scenario())
    assert list(crashed.outbox) == [str(rnd.round)] and len(crashed.history) == 1
    state = NodeState.load(tmp_path / "gw-1" / "node-state.json")
    assert state.outbox == {} and state.answered == {str(rnd.round): "submitted"}
    assert len(state.history) == 1  # privacy booked once
    report = httpx.get(f"{cloud.url}/v1/rounds/{rnd.round}", headers=ADMIN, timeout=30).json()
    assert sorted(u["participant"] for u in report["updates"]) == ["gw-1", "gw-2", "gw-3"]
    assert report["state"] == "completed", report


def test_training_runs_ahead_of_the_input_phase_and_books_nothing_until_release(cloud, tmp_path: Path) -> None:  # noqa: ANN001
    nodes = [node(cloud, tmp_path, f"gw-{k}") for k in (1, 2, 3)]

    async def scenario() -> None:
        for n in nodes:
            await n.enroll()
        async with httpx.AsyncClient(base_url=cloud.url, headers=ADMIN) as http:
            rid = (await http.post("/v1/rounds", json={"quorum": 3, "deadline_s": 120})).json()["round"]
            for _ in range(600):  # serve (as `ParticipantNode.run` does) until the round takes inputs, then stop
                views = [await n.poll_round() for n in nodes]
                if all(v is not None and v.secagg_phase == "input" for v in views):
                    break
                for n, v in zip(nodes, views, strict=True):
                    if v is not None:
                        await n.serve_round(v)
                await asyncio.sleep(0.05)
            rnd = views[0]
            assert rnd.secagg_phase == "input" and rnd.round == rid
            # every update was trained during the phases before input; none was released or booked
            prepared = [await n._ahead[rid] for n in nodes]
            assert all(p.result.n_samples == 3 for p in prepared)
            assert all(NodeState.load(n.state_path).history == [] for n in nodes)
            assert (await http.get(f"/v1/rounds/{rid}")).json()["updates"] == []
            # the same update as training at input time (simulation mode: the round's seed fixes sampling and noise)
            again = await nodes[0]._prepare(rnd)
            assert np.array_equal(again.delta, prepared[0].delta) and again.dp == prepared[0].dp
            # a newer round drops the old round's preparation: it is never released, never booked
            nodes[2].train_ahead(rnd.model_copy(update={"round": rid + 1, "expected": []}))
            assert rid not in nodes[2]._ahead and NodeState.load(nodes[2].state_path).history == []
            report = await serve_until(nodes, http, rid, states=("completed", "failed"))  # gw-3 trains again
        for n in nodes:
            await n.aclose()
        assert report["state"] == "completed", report
        assert [u["participant"] for u in report["updates"]] == ["gw-1", "gw-2", "gw-3"]
        for n in nodes:  # booked once each at release: the dropped preparation cost gw-3 nothing
            assert len(NodeState.load(n.state_path).history) == 1

    asyncio.run(scenario())


def test_polls_keep_their_period_however_long_a_poll_worked() -> None:
    async def settles(task: asyncio.Task) -> bool:  # done within a few turns of the event loop (no clock read)
        for _ in range(10):
            if task.done():
                return True
            await asyncio.sleep(0)
        return task.done()

    async def scenario() -> None:
        loop, stop = asyncio.get_running_loop(), asyncio.Event()
        # a poll whose work (answering 25 nodes, say) took longer than the period: the next poll is due now, not a
        # whole period later (the old loop slept the full period after the work: 30 s here)
        assert await settles(asyncio.create_task(next_poll(stop, loop.time() - 40.0, 30.0)))
        # a poll that took no time waits out its period, unless the node is told to stop
        waiting = asyncio.create_task(next_poll(stop, loop.time(), 30.0))
        assert not await settles(waiting)
        stop.set()
        assert await settles(waiting)

    asyncio.run(scenario())
