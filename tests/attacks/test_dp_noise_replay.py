"""Attack (issue 13, item 2): regenerate a node's DP-SGD noise from public facts and subtract it from its update.

The insider knows everything but the noise: the base model, the learning rate, the expected batch, the round id
(public) and the node's seed (it defaulted to 0, fleets shared it). Before, `gateway/node.py` seeded torch with
`seed * 1_000_003 + round_id` and the sampler with the seed: anyone could rerun the draws. The attacker here takes
one released training step (full batch, so no sampling to guess), regenerates the noise every way a seed could have
produced it, and subtracts it: if the remainder is a clipped gradient sum (norm <= P x C, far below the noise's
sigma C sqrt(d)), the noise is gone and the patients' gradients are exposed.

Against the production node (OS CSPRNG) no candidate works. Against the same node in the named simulation mode
(what replays run, labelled not private) the attack recovers the clipped sum: the test can tell the difference.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from federation import model
from federation.errors import ConfigError
from federation.privacy_rng import SIMULATION_LABEL, PrivacyRNG
from federation.windows import Windows
from gateway.dp_noise import gaussian_noise
from gateway.node import NodeConfig
from gateway.trainer import DPConfig, train_dp

ROUND = 3  # public: every round view names it
SEEDS = range(0, 64)  # the attacker's guesses (the old default was 0)
SIGMA, C, LR = 1.0, 1.0, 0.05
PATIENTS = 24


def cohort() -> Windows:
    rng = np.random.default_rng(0)
    n = 20
    x = np.hstack([rng.uniform(70, 250, size=(PATIENTS * n, model.HISTORY_STEPS)),
                   rng.normal(0, 1, size=(PATIENTS * n, model.N_FEATURES))])
    y = x[:, 22:24] + rng.normal(0, 20, size=(PATIENTS * n, 2))
    return Windows(x, y, np.repeat(np.arange(PATIENTS), n), tuple(f"dev{k}" for k in range(PATIENTS)),
                   np.arange(PATIENTS * n) * 300)


def node_config(tmp_path: Path, **rng: object) -> NodeConfig:
    dp = DPConfig(noise_multiplier=SIGMA, max_grad_norm=C, expected_batch_size=64, lr=LR, unit="patient")
    return NodeConfig(participant_id="gw-1", kind="gateway", cloud_url="http://127.0.0.1:9", state_dir=tmp_path,
                      enroll_token="t", dp=dp, **rng)


def released_step(cfg: NodeConfig) -> tuple[np.ndarray, np.ndarray]:
    """(base weights, released weights) after one full-batch user-level step, exactly as `answer` trains."""
    w0 = model.init_weights(seed=1)
    res = train_dp(w0, cohort(), cfg=cfg.dp, epochs=1, rng=cfg.round_rng(ROUND))
    assert (res.steps, res.sample_rate) == (1, 1.0)  # q = 1: every patient, nothing to guess but the noise
    return w0, res.weights


def candidate_noises(size: int) -> list[np.ndarray]:
    """Every noise vector a public seed and round id could have produced (old torch derivation, and the
    simulation-mode stream)."""
    out = []
    for seed in SEEDS:
        torch.manual_seed(seed * 1_000_003 + ROUND)  # the old gateway/node.py derivation
        out.append(torch.normal(0.0, SIGMA * C, size=(size,)).numpy().astype(np.float64))
        out.append(_simulated_noise(PrivacyRNG.simulation(np.random.SeedSequence([seed, ROUND])), size))
    return out


def _simulated_noise(sim: PrivacyRNG, size: int) -> np.ndarray:
    # the trainer draws the patient sample first (q = 1: a permutation of PATIENTS), then each patient's windows,
    # then the noise: replay those draws from the candidate stream
    from gateway.dp_sampling import distinct_uniform

    distinct_uniform(sim, PATIENTS, PATIENTS)
    for _ in range(PATIENTS):
        distinct_uniform(sim, 20, 20)
    return gaussian_noise(sim, std=SIGMA * C, size=size)


def best_residual(w0: np.ndarray, w1: np.ndarray) -> float:
    """Smallest ||released sum - candidate noise|| over all candidates, relative to the noise norm."""
    # first SGD step with momentum: w1 = w0 - lr * (S + N) / (q P)
    noisy_sum = (w0.astype(np.float64) - w1.astype(np.float64)) / LR * PATIENTS
    noise_norm = SIGMA * C * np.sqrt(len(w0))
    return min(float(np.linalg.norm(noisy_sum - n)) for n in candidate_noises(len(w0))) / noise_norm


def test_the_noise_of_a_secure_node_cannot_be_regenerated_from_seed_and_round(tmp_path: Path) -> None:
    w0, w1 = released_step(node_config(tmp_path))
    # Subtracting a wrong candidate leaves about sqrt(2) noise norms; a right one leaves the clipped sum
    # (<= P x C = 24 against a noise norm of 64): a ratio under 0.4 would mean the noise was regenerated.
    assert best_residual(w0, w1) > 1.2


def test_the_same_step_in_simulation_mode_is_exposed_which_is_why_it_is_labelled(tmp_path: Path) -> None:
    cfg = node_config(tmp_path, privacy_rng="simulation", seed=0)
    w0, w1 = released_step(cfg)
    assert best_residual(w0, w1) < 0.4  # the attack works on seeded noise: the clipped sum is exposed
    assert PrivacyRNG.simulation(0).label == SIMULATION_LABEL


def test_a_production_node_refuses_a_seed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="simulation"):
        node_config(tmp_path, seed=0)
    with pytest.raises(ConfigError, match="seed"):
        node_config(tmp_path, privacy_rng="simulation")
    proc = subprocess.run([sys.executable, "-m", "federation.cli", "hospital", "run", "--id", "hosp-1", "--state-dir",
                           str(tmp_path / "h"), "--data", str(tmp_path / "none.csv"), "--enroll-token", "t",
                           "--seed", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--privacy-rng simulation" in proc.stderr


def test_simulation_mode_is_labelled_in_the_status_and_secure_mode_is_the_default(tmp_path: Path) -> None:
    from gateway.node import ParticipantNode

    sim_node = ParticipantNode(node_config(tmp_path / "a", privacy_rng="simulation", seed=3), lambda _c: cohort())
    assert sim_node.status()["privacy_rng"] == "simulation"
    assert sim_node.status()["simulation_label"] == SIMULATION_LABEL
    secure = ParticipantNode(node_config(tmp_path / "b"), lambda _c: cohort()).status()
    assert secure["privacy_rng"] == "secure" and "simulation_label" not in secure
    assert secure["privacy"]["unit"] == "patient"
