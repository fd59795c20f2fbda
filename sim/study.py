"""In-process federation studies: the same data path, LDP, DP-SGD and FedAvg as a replay, without processes.

Used by the privacy-utility sweep, where 24 settings times several rounds would take too long as full
replays. Each gateway's devices privatise every CGM reading (local DP) before the gateway builds windows;
hospitals train on clean CGM; DP-SGD noise is set so each node's cumulative epsilon over all rounds meets
the target. Encryption is left out here: the encrypted sum equals the plaintext sum to ~1e-8
(`tests/federation/test_ckks.py`), so it cannot change these figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from device.ldp import LDPSpec, privatize
from device.sensor import SENSOR_RANGE, stable_seed
from federation import metrics, model
from federation.clock import DEFAULT_SIM_START
from federation.windows import make_windows
from sim.baselines import linear_extrapolation, train_plain
from sim.evaluate import HORIZONS, HeldOut, heldout_set, score_forecast
from sim.patients import PatientTrace, training_patients


@dataclass(frozen=True)
class StudyConfig:
    source: str = "uva-padova"
    sensor: str = "dexcom-g7"
    seed: int = 7
    gateways: int = 3
    patients_per_gateway: int = 10
    hospitals: int = 1
    hospital_patients: int = 10
    days: float = 7.0
    heldout_patients: int = 15
    heldout_days: float = 3.0
    rounds: int = 5
    local_epochs: int = 2
    ldp_mechanism: str = "hybrid"
    ldp_epsilon: float | None = 8.0  # None: devices send clean readings
    dp_epsilon: float | None = 8.0  # cumulative per node over all rounds; None: plain SGD
    dp_delta: float = 1e-5
    accountant: str = "rdp"
    batch_size: int = 256  # larger Poisson batches: less noise per example and 4x fewer DP-SGD steps than 64
    lr: float = 0.1
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class NodeData:
    name: str
    x: np.ndarray
    y: np.ndarray


def _node(name: str, patients: list[PatientTrace], ldp: LDPSpec | None, seed: int) -> NodeData:
    xs, ys = [], []
    for p in patients:
        cgm = p.cgm.copy()
        if ldp is not None:
            seen = ~np.isnan(cgm)
            cgm[seen] = privatize(cgm[seen], spec=ldp, rng=np.random.default_rng(stable_seed(seed, p.name)))
        x, y = make_windows(cgm)
        xs.append(x)
        ys.append(y)
    return NodeData(name, np.concatenate(xs), np.concatenate(ys))


def training_cohort(cfg: StudyConfig) -> tuple[list[PatientTrace], list[PatientTrace]]:
    """The clean training patients: the gateways' device wearers, then the hospitals' patients."""
    kw = {"days": cfg.days, "seed": cfg.seed, "start": DEFAULT_SIM_START, "sensor": cfg.sensor}
    n_gw = cfg.gateways * cfg.patients_per_gateway
    gw_patients = training_patients(cfg.source, n_gw, **kw)
    hosp_patients = training_patients(cfg.source, cfg.hospitals * cfg.hospital_patients, offset=n_gw, **kw) \
        if cfg.hospitals else []
    return gw_patients, hosp_patients


def build_nodes(cfg: StudyConfig) -> list[NodeData]:
    """Every node's training windows: gateways' readings privatised on the devices, hospitals' clean."""
    ldp = None if cfg.ldp_epsilon is None else LDPSpec(mechanism=cfg.ldp_mechanism, epsilon=cfg.ldp_epsilon,
                                                      lo=SENSOR_RANGE[0], hi=SENSOR_RANGE[1])
    gw_patients, hosp_patients = training_cohort(cfg)
    per_gw, per_h = cfg.patients_per_gateway, cfg.hospital_patients
    nodes = [_node(f"gw-{g + 1}", gw_patients[g * per_gw:(g + 1) * per_gw], ldp, cfg.seed)
             for g in range(cfg.gateways)]
    nodes += [_node(f"hosp-{h + 1}", hosp_patients[h * per_h:(h + 1) * per_h], None, cfg.seed)
              for h in range(cfg.hospitals)]
    return nodes


def _noise_multiplier(cfg: StudyConfig, n: int) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    q = min(1.0, cfg.batch_size / n)
    steps = cfg.rounds * max(1, int(round(cfg.local_epochs / q)))
    return float(get_noise_multiplier(target_epsilon=cfg.dp_epsilon, target_delta=cfg.dp_delta, sample_rate=q,
                                      steps=steps, accountant=cfg.accountant))


def federate(cfg: StudyConfig, nodes: list[NodeData], *, on_round: Callable[[int, np.ndarray], None] | None = None
             ) -> np.ndarray:
    """FedAvg over the nodes for cfg.rounds rounds; returns the final weights."""
    from gateway.trainer import DPConfig, train_dp

    weights = model.init_weights(seed=cfg.seed)
    sigmas = {n.name: _noise_multiplier(cfg, len(n.x)) for n in nodes} if cfg.dp_epsilon is not None else {}
    for r in range(1, cfg.rounds + 1):
        total, acc = 0, np.zeros(model.N_PARAMS)
        for k, node in enumerate(nodes):
            seed = cfg.seed * 10_007 + r * 101 + k
            if cfg.dp_epsilon is None:
                new = train_plain(weights, node.x, node.y, epochs=cfg.local_epochs, seed=seed, lr=cfg.lr,
                                  batch_size=cfg.batch_size)
            else:
                dp = DPConfig(noise_multiplier=sigmas[node.name], max_grad_norm=cfg.max_grad_norm,
                              expected_batch_size=cfg.batch_size, lr=cfg.lr, delta=cfg.dp_delta,
                              accountant=cfg.accountant, epsilon_cap=1e9)
                new = train_dp(weights, node.x, node.y, cfg=dp, epochs=cfg.local_epochs, seed=seed).weights
            acc += (new.astype(np.float64) - weights) * len(node.x)
            total += len(node.x)
        weights = (weights + acc / total).astype(np.float32)
        if on_round:
            on_round(r, weights)
    return weights


def heldout(cfg: StudyConfig) -> HeldOut:
    return heldout_set(source=cfg.source, patients=cfg.heldout_patients, days=cfg.heldout_days, seed=cfg.seed,
                       sensor=cfg.sensor)


def run_study(cfg: StudyConfig, *, progress: Callable[[str], None] | None = None) -> dict:
    """Federated model vs persistence, linear extrapolation and the pooled non-private upper bound."""
    nodes = build_nodes(cfg)
    test = heldout(cfg)
    per_round: list[float] = []

    def on_round(r: int, w: np.ndarray) -> None:
        per_round.append(metrics.rmse(model.predict(w, test.x)[:, 0], test.y_cgm[:, 0]))
        if progress:
            progress(f"round {r}: RMSE@30 {per_round[-1]:.2f}")

    final = federate(cfg, nodes, on_round=on_round)
    result = {"config": asdict(cfg), "windows": {n.name: len(n.x) for n in nodes}, "heldout_windows": len(test.x),
              "rmse30_per_round": per_round, "federated": score_forecast(model.predict(final, test.x), test),
              "persistence": score_forecast(metrics.persistence(test.x, len(HORIZONS)), test),
              "linear": score_forecast(linear_extrapolation(test.x), test)}
    return result


def centralised_upper_bound(cfg: StudyConfig) -> dict:
    """Non-private model on the pooled clean training data (same epochs in total as the federation)."""
    gw_patients, hosp_patients = training_cohort(cfg)
    xs, ys = zip(*(make_windows(p.cgm) for p in gw_patients + hosp_patients), strict=True)
    weights = train_plain(model.init_weights(seed=cfg.seed), np.concatenate(xs), np.concatenate(ys),
                          epochs=cfg.rounds * cfg.local_epochs, seed=cfg.seed, lr=cfg.lr, batch_size=cfg.batch_size)
    test = heldout(cfg)
    return score_forecast(model.predict(weights, test.x), test)
