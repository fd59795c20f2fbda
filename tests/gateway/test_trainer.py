"""DP-SGD trainer and privacy accounting: empty Poisson batches, noise actually added, budget across restarts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from federation import dp_accounting, model
from gateway.errors import GatewayError
from gateway.node import NodeConfig, ParticipantNode
from gateway.state import NodeState
from gateway.trainer import DPConfig, plan_steps, train_dp
from tests.gateway.inputs import sim, with_features


def data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.uniform(80, 250, size=(n, 1))
    x = with_features(base + rng.normal(0, 5, size=(n, model.HISTORY_STEPS)), rng)
    return x, base + rng.normal(0, 10, size=(n, 2))


def test_empty_poisson_batches_are_noise_steps_not_crashes() -> None:
    x, y = data(40)
    cfg = DPConfig(expected_batch_size=2, unit="window")  # q = 0.05: about one step in seven draws an empty batch
    res = train_dp(model.init_weights(seed=0), x, y, cfg=cfg, epochs=3, rng=sim(4))
    assert res.steps == plan_steps(40, cfg=cfg, epochs=3)[1] == 60
    assert np.all(np.isfinite(res.weights))


def test_training_is_deterministic_by_seed_and_noisy_across_seeds() -> None:
    x, y = data(200)
    w0 = model.init_weights(seed=0)
    cfg = DPConfig(noise_multiplier=1.0, unit="window")
    a, again, b = (train_dp(w0, x, y, cfg=cfg, epochs=1, rng=sim(s)) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.weights, again.weights)
    assert not np.allclose(a.weights, b.weights)


def test_budget_persists_across_restarts_and_the_cap_holds(tmp_path: Path) -> None:
    """Cumulative epsilon is recomputed from the persisted history by one accountant, not summed per round."""
    cfg = NodeConfig(participant_id="gw-1", kind="gateway", cloud_url="http://127.0.0.1:9", state_dir=tmp_path,
                     enroll_token="t", dp=DPConfig(accountant="rdp", epsilon_cap=3.0))
    step = (1.0, 0.02, 100)
    node = ParticipantNode(cfg, lambda _c: data(10))
    node.state.history.append(list(step))
    node.state.save(node.state_path)
    once = node.privacy_status()
    restarted = ParticipantNode(cfg, lambda _c: data(10))  # a new process on the same state directory
    restarted.state.history.append(list(step))
    restarted.state.save(restarted.state_path)
    twice = ParticipantNode(cfg, lambda _c: data(10)).privacy_status()
    assert twice["rounds_trained"] == 2 and NodeState.load(tmp_path / "node-state.json").steps() == [step, step]
    assert twice["epsilon_cumulative"] == pytest.approx(dp_accounting.epsilon([step, step], accountant="rdp"))
    assert once["epsilon_cumulative"] < twice["epsilon_cumulative"] < 2 * once["epsilon_cumulative"]
    assert twice["epsilon_last_round"] == pytest.approx(once["epsilon_cumulative"])
    assert twice["delta"] == 1e-5 and twice["unit"] == "patient" and twice["accountant"] == "rdp"


def test_corrupt_state_refuses_to_start_with_a_blank_budget(tmp_path: Path) -> None:
    (tmp_path / "node-state.json").write_text('{"history": [[1.0, 0.02')
    with pytest.raises(GatewayError, match="corrupt"):
        NodeState.load(tmp_path / "node-state.json")
