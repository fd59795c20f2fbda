"""The scale study's node trainings on Ray (scale-out issue): the hospital nodes of a tiny scale configuration, built
by the pool's own code (`gateway.pool.build_nodes` on the study's clinical CSVs), train a round as Ray tasks on a real
local Ray and get exactly the weights, losses and sample counts they get in-process for the same seed (simulation
mode, torch at one thread as in a pool process); the flags refuse what they cannot do, with exit 2."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from federation import model
from federation.cli import main
from gateway.node import NodeConfig
from gateway.pool import build_nodes
from gateway.trainer import DPConfig, TrainResult
from sim.executors import InProcess, RayExecutor
from sim.replay import write_patient_data
from sim.scenario import SHIPPED, at_scale, parse_scenario
from tests.sim.test_ray_sweep import one_torch_thread  # noqa: F401 - a fixture

ray = pytest.importorskip("ray", reason="the 'scale' extra (Ray) is not installed")
ROOT = Path(__file__).resolve().parents[2]


def _tiny_study(out: Path) -> tuple[list[dict], NodeConfig]:
    """The shipped scale scenario shrunk to 3 hospitals of 2 patients (half a day each): their pool spec and the
    node template `wearfed replay` gives its pools (simulation mode, the scenario's seed and DP settings)."""
    text = (SHIPPED / "scale.toml").read_text()
    text = (text.replace("participants = [5, 50]", "participants = [3, 4]").replace("patients = 50", "patients = 6")
            .replace("days = 2.0", "days = 0.5").replace("regions = 5 ", "regions = 0 "))
    s = at_scale(parse_scenario(text), 3)
    _traces, csvs = write_patient_data(s, out)
    spec = [{"id": hid, "data": csv, "state_dir": out / hid, "enroll_token": "unused"} for hid, csv in csvs.items()]
    p = s.privacy
    dp = DPConfig(noise_multiplier=p.dp_noise_multiplier, delta=p.dp_delta, accountant=p.dp_accountant,
                  epsilon_cap=p.participant_epsilon_cap)
    template = NodeConfig(participant_id="", kind="hospital", cloud_url="http://127.0.0.1:9", state_dir=out,
                          enroll_token="", dp=dp, privacy_rng="simulation", seed=s.scenario.seed)
    return spec, template


def _train_round(spec: list[dict], template: NodeConfig, trainer) -> dict[str, TrainResult]:  # noqa: ANN001
    nodes = build_nodes(spec, template, trainer=trainer)
    base = model.init_weights(seed=0)

    async def every_node() -> list[TrainResult]:  # at once, as a pool with a training slot per node does
        results = await asyncio.gather(*(node.train(1, base, source(None), epochs=1) for node, source in nodes))
        for node, _ in nodes:
            await node.aclose()
        return list(results)

    return {node.cfg.participant_id: r for (node, _), r in zip(nodes, asyncio.run(every_node()), strict=True)}


class _Recording(RayExecutor):
    """The Ray executor, noting which function each map ran (Ray workers: `tests/sim/test_ray_sweep.py`)."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []

    def map(self, fn, items, **shared):  # noqa: ANN001, ANN003, ANN201
        self.calls.append(fn.__name__)
        return super().map(fn, items, **shared)


def test_node_trainings_on_ray_equal_the_in_process_trainings(tmp_path: Path, one_torch_thread: None) -> None:  # noqa: F811
    spec, template = _tiny_study(tmp_path)
    here = _train_round(spec, template, InProcess())
    ex = _Recording("auto", local_cpus=2)
    try:
        there = _train_round(spec, template, ex)
    finally:
        ex.close()
    assert ex.calls == ["train_dp"] * 3  # every node's training went to Ray, one task each
    assert sorted(here) == sorted(there) == ["h-001", "h-002", "h-003"]
    for pid, a in here.items():
        b = there[pid]
        assert (a.n_samples, a.n_windows, a.steps, a.sample_rate, a.unit) == \
               (b.n_samples, b.n_windows, b.steps, b.sample_rate, b.unit), pid
        assert a.loss == b.loss, (pid, a.loss, b.loss)
        assert a.weights.tobytes() == b.weights.tobytes(), (pid, float(abs(a.weights - b.weights).max()))
    # and the nodes' trainings differ from each other (each trained on its own patients)
    assert len({r.weights.tobytes() for r in here.values()}) == 3


def test_ray_flags_refuse_what_they_cannot_do(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    spec, _ = _tiny_study(tmp_path)
    (tmp_path / "spec.json").write_text(json.dumps({"nodes": spec}, default=str))
    pool = subprocess.run([sys.executable, "-m", "federation.cli", "hospital", "pool", "--spec",
                           str(tmp_path / "spec.json"), "--cloud-url", "http://127.0.0.1:9", "--ray", "127.0.0.1:1"],
                          capture_output=True, text=True, timeout=180, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert pool.returncode == 2 and "--ray 127.0.0.1:1" in pool.stderr, pool.stderr[-2000:]
    assert "Traceback" not in pool.stderr
    assert main(["replay", "demo", "--out", str(tmp_path / "o"), "--ray", "auto"]) == 2
    err = capsys.readouterr().err
    assert "--ray applies to the scale study only" in err and "Traceback" not in err
