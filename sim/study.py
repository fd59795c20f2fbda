"""In-process federation studies: the data path, device release, user-level DP-SGD and FedAvg of a replay, without
processes (the privacy-utility sweep runs hundreds of settings).

A study simulates `patients` training patients (UVA/Padova cohort) and splits them over gateways (their devices'
wearers) and hospitals (their clinical patients, `hospital_share` of the population). Each gateway trains on what
its devices release under the chosen device-release design (`DEVICE_RELEASES`); hospitals train on clean CGM with
insulin and carbs. Every node runs user-level DP-SGD (`gateway.trainer`, unit "patient") with its noise set so its
cumulative epsilon per patient over all rounds meets `dp_epsilon` (delta `dp_delta`, `accountant`), or plain SGD
when `dp_epsilon` is None; the cloud averages the updates weighted by patients (FedAvg). Encryption is left out: the
encrypted sum equals the plaintext sum to ~1e-8 (tests/federation/test_ckks.py).

Scale (2 cores): every window is kept, but each epoch of plain SGD visits at most `windows_per_patient_epoch` random
windows of each patient, and each DP-SGD step at most `windows_per_patient` of each sampled patient's windows.

Randomness: a study is a simulation (seeded, `federation.privacy_rng.SIMULATION_LABEL`): device noise, sampling
and DP-SGD noise replay by seed. Never a way to run a deployment.

Device-release designs (the sweep's device axis) are functions

    release(patients: list[PatientTrace], *, epsilon_per_day: float, rng: numpy.random.Generator)
        -> list[PatientSeries]

returning, per patient, what the gateway trains on (glucose readings and whatever insulin/carb events the design
releases, after any gateway-side post-processing), under a device budget of `epsilon_per_day` per patient-day. Name
one here (`DEVICE_RELEASES`) or pass "module:function" as the design (`resolve_design`).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from federation import metrics, model
from federation.clock import DEFAULT_SIM_START
from federation.privacy_rng import SIMULATION_LABEL, PrivacyRNG
from federation.series import PatientSeries
from federation.windows import Windows, windows_from_series
from sim.baselines import linear_extrapolation, per_patient_ar, train_plain
from sim.evaluate import HORIZONS, HeldOut, heldout_set, score_forecast
from sim.patients import PatientTrace, training_patients

log = logging.getLogger(__name__)
READINGS_PER_DAY = 288  # a 5-min CGM
DeviceRelease = Callable[..., list[PatientSeries]]


def release_clean(patients: list[PatientTrace], *, epsilon_per_day: float | None = None,
                  rng: np.random.Generator | None = None) -> list[PatientSeries]:
    """No device LDP: the gateway gets every reading and every insulin and carb event (DP-SGD only)."""
    return [p.series() for p in patients]


def release_per_reading(patients: list[PatientTrace], *, epsilon_per_day: float,
                        rng: np.random.Generator) -> list[PatientSeries]:
    """Event-level LDP, the design devices ran until now: every reading privatised on its own (Hybrid mechanism on
    the sensor range, `device.ldp`), epsilon per reading = epsilon_per_day / 288 (288 readings a day compose to the
    day's budget). Insulin and carbs are not released: the day's budget is spent on glucose."""
    from device.ldp import LDPSpec, privatize
    from device.sensor import SENSOR_RANGE

    spec = LDPSpec(mechanism="hybrid", epsilon=epsilon_per_day / READINGS_PER_DAY, lo=SENSOR_RANGE[0],
                   hi=SENSOR_RANGE[1])
    out = []
    for p in patients:
        cgm = p.cgm.astype(np.float64).copy()
        seen = ~np.isnan(cgm)
        cgm[seen] = privatize(cgm[seen], spec=spec, rng=rng)
        out.append(PatientSeries(times=p.times[seen], glucose=cgm[seen]))
    return out


DEVICE_RELEASES: dict[str, DeviceRelease] = {"none": release_clean, "per-reading": release_per_reading}
DESIGN_LABELS = {"none": "no device LDP (clean readings, insulin and carbs)",
                 "per-reading": "event-level LDP per reading (Hybrid), epsilon per day / 288 each; no insulin/carbs"}


def resolve_design(name: str) -> DeviceRelease:
    """A registered design, or "package.module:function" (another design's release function)."""
    if name in DEVICE_RELEASES:
        return DEVICE_RELEASES[name]
    if ":" in name:
        module, attr = name.split(":", 1)
        fn = getattr(importlib.import_module(module), attr)
        if not callable(fn):
            raise ValueError(f"device design {name!r} is not a function")
        return fn
    raise ValueError(f"unknown device design {name!r}: one of {sorted(DEVICE_RELEASES)} or module:function")


@dataclass(frozen=True)
class StudyConfig:
    source: str = "uva-padova"
    sensor: str = "dexcom-g7"
    seed: int = 7
    patients: int = 30  # training patients in total, split over gateways and hospitals
    gateways: int = 3
    hospitals: int = 1
    hospital_share: float = 0.25  # of the patients, the hospitals' (the rest wear devices at the gateways)
    days: float = 4.0
    heldout_patients: int = 60  # never seen in training: other subjects, other seed
    heldout_days: float = 3.0  # scored
    heldout_fit_days: float = 2.0  # before the scored days: the per-patient AR baseline is fitted there
    rounds: int = 5
    local_epochs: int = 4
    device_design: str = "none"
    device_epsilon_day: float | None = None  # per patient-day; None: the design's "none"
    dp_epsilon: float | None = None  # DP-SGD, per patient, cumulative over all rounds at each node; None: plain SGD
    dp_delta: float = 1e-5
    accountant: str = "rdp"
    hypo_weight: float = 1.0
    # plain SGD (momentum 0.9)
    lr: float = 0.05
    batch_size: int = 256
    windows_per_patient_epoch: int = 200
    # user-level DP-SGD
    # tuned on 3,000 patients at epsilon 4 (RMSE@30 on held-out patients): lr 0.5 -> 19.4, 0.15 -> 16.8,
    # 0.05 -> 15.9 with 20 passes per round, 15.4 with 40
    dp_lr: float = 0.05
    dp_epochs: int = 40  # passes over each node's patients per round
    patients_per_step: int = 256
    windows_per_patient: int = 16
    max_grad_norm: float = 0.5
    # the initial model: random (0) or trained without privacy on this many days of the 30 published subjects
    # (public data, `sim.public_model`); with it, fewer DP-SGD passes do better (docs/results.md: 10 instead of 40)
    public_pretrain_days: float = 0.0
    public_pretrain_epochs: int = 10
    extra: dict = field(default_factory=dict)  # free-form labels carried into the results

    def __post_init__(self) -> None:
        if self.patients < self.gateways + self.hospitals:
            raise ValueError(f"{self.patients} patients cannot fill {self.gateways} gateways and "
                             f"{self.hospitals} hospitals")
        if not 0 <= self.hospital_share < 1:
            raise ValueError(f"hospital_share must be in [0, 1), got {self.hospital_share}")


@dataclass(frozen=True)
class NodeData:
    name: str
    windows: Windows

    @property
    def patients(self) -> int:
        return self.windows.n_patients


def split_patients(cfg: StudyConfig) -> tuple[list[int], list[int]]:
    """(patients per gateway, patients per hospital): the hospitals hold `hospital_share`, evenly; gateways the rest."""
    n_h = int(round(cfg.patients * cfg.hospital_share)) if cfg.hospitals else 0
    n_h = min(max(n_h, cfg.hospitals), cfg.patients - cfg.gateways) if cfg.hospitals else 0
    n_g = cfg.patients - n_h
    per_g = [n_g // cfg.gateways + (k < n_g % cfg.gateways) for k in range(cfg.gateways)]
    per_h = [n_h // cfg.hospitals + (k < n_h % cfg.hospitals) for k in range(cfg.hospitals)] if cfg.hospitals else []
    return per_g, per_h


def training_cohort(cfg: StudyConfig) -> list[PatientTrace]:
    """The clean training patients (device wearers first, then hospital patients)."""
    return training_patients(cfg.source, cfg.patients, days=cfg.days, seed=cfg.seed, start=DEFAULT_SIM_START,
                             sensor=cfg.sensor)


def _windows(series: dict[str, PatientSeries]) -> Windows:
    w = windows_from_series(series)
    return Windows(w.x.astype(np.float32), w.y.astype(np.float32), w.patient, w.patients, w.t)


def build_nodes(cfg: StudyConfig, cohort: list[PatientTrace] | None = None) -> list[NodeData]:
    """Every node's training windows: gateways' from what their devices release, hospitals' clean."""
    cohort = training_cohort(cfg) if cohort is None else cohort
    per_g, per_h = split_patients(cfg)
    release = resolve_design(cfg.device_design)
    if cfg.device_design != "none" and cfg.device_epsilon_day is None:
        raise ValueError(f"device design {cfg.device_design!r} needs device_epsilon_day")
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xDE71CE]))  # simulation: seeded device noise
    nodes, k = [], 0
    for g, n in enumerate(per_g):
        pats = cohort[k:k + n]
        k += n
        released = release(pats, epsilon_per_day=cfg.device_epsilon_day, rng=rng)
        nodes.append(NodeData(f"gw-{g + 1}", _windows({p.name: s for p, s in zip(pats, released, strict=True)})))
    for h, n in enumerate(per_h):
        pats = cohort[k:k + n]
        k += n
        nodes.append(NodeData(f"hosp-{h + 1}", _windows({p.name: p.series() for p in pats})))
    return nodes


def noise_multiplier(cfg: StudyConfig, n_patients: int) -> tuple[float, float, int]:
    """(sigma, q, steps per round) so one node's cumulative epsilon per patient over all rounds is cfg.dp_epsilon."""
    from opacus.accountants.utils import get_noise_multiplier

    from gateway.trainer import DPConfig, plan_steps

    q, steps = plan_steps(n_patients, cfg=DPConfig(expected_batch_size=cfg.patients_per_step), epochs=cfg.dp_epochs)
    sigma = get_noise_multiplier(target_epsilon=cfg.dp_epsilon, target_delta=cfg.dp_delta, sample_rate=q,
                                 steps=cfg.rounds * steps, accountant=cfg.accountant)
    return float(sigma), q, steps


def _subsample(w: Windows, per_patient: int, rng: np.random.Generator) -> np.ndarray:
    """At most `per_patient` random windows of each patient (row indices)."""
    order = rng.permutation(len(w.patient))
    ranks = np.empty(len(order), dtype=np.int64)
    by_patient = order[np.argsort(w.patient[order], kind="stable")]
    starts = np.searchsorted(w.patient[by_patient], w.patient[by_patient], side="left")
    ranks[by_patient] = np.arange(len(by_patient)) - starts
    return np.flatnonzero(ranks < per_patient)


def initial_weights(cfg: StudyConfig) -> np.ndarray:
    """The federation's starting model: random, or pretrained on public subjects (`public_pretrain_days`)."""
    if cfg.public_pretrain_days <= 0:
        return model.init_weights(seed=cfg.seed)
    from sim.public_model import public_pretrained

    return public_pretrained(cfg.source, days=cfg.public_pretrain_days, epochs=cfg.public_pretrain_epochs,
                             init_seed=cfg.seed)


def federate(cfg: StudyConfig, nodes: list[NodeData], *, on_round: Callable[[int, np.ndarray], None] | None = None
             ) -> tuple[np.ndarray, dict]:
    """FedAvg over the nodes for cfg.rounds rounds; returns (final weights, privacy per node)."""
    from gateway.trainer import DPConfig, train_dp

    weights = initial_weights(cfg)
    privacy: dict[str, dict] = {}
    plans = {n.name: noise_multiplier(cfg, n.patients) for n in nodes} if cfg.dp_epsilon is not None else {}
    for name, (sigma, q, steps) in plans.items():
        from federation import dp_accounting

        spent = dp_accounting.epsilon([(sigma, q, steps)] * cfg.rounds, delta=cfg.dp_delta, accountant=cfg.accountant)
        privacy[name] = {"noise_multiplier": sigma, "sample_rate": q, "steps": steps * cfg.rounds, "epsilon": spent,
                         "delta": cfg.dp_delta, "unit": "patient", "accountant": cfg.accountant}
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0x5EED]))
    for r in range(1, cfg.rounds + 1):
        total, acc = 0, np.zeros(model.N_PARAMS)
        for k, node in enumerate(nodes):
            if cfg.dp_epsilon is None:
                rows = _subsample(node.windows, cfg.windows_per_patient_epoch, rng)
                new = weights
                for e in range(cfg.local_epochs):  # a fresh subsample of each patient's windows per epoch
                    rows = rows if e == 0 else _subsample(node.windows, cfg.windows_per_patient_epoch, rng)
                    new = train_plain(new, node.windows.x[rows], node.windows.y[rows], epochs=1, lr=cfg.lr,
                                      seed=int(rng.integers(2 ** 31)), batch_size=cfg.batch_size,
                                      hypo_weight=cfg.hypo_weight)
            else:
                sigma = plans[node.name][0]
                dp = DPConfig(noise_multiplier=sigma, max_grad_norm=cfg.max_grad_norm, unit="patient",
                              expected_batch_size=cfg.patients_per_step, lr=cfg.dp_lr, delta=cfg.dp_delta,
                              accountant=cfg.accountant, epsilon_cap=1e9, windows_per_patient=cfg.windows_per_patient,
                              hypo_weight=cfg.hypo_weight)
                sim = PrivacyRNG.simulation(np.random.SeedSequence([cfg.seed, r, k]))
                new = train_dp(weights, node.windows, cfg=dp, epochs=cfg.dp_epochs, rng=sim).weights
            acc += (new.astype(np.float64) - weights) * node.patients
            total += node.patients
        weights = (weights + acc / total).astype(np.float32)
        if on_round:
            on_round(r, weights)
    return weights, privacy


def heldout(cfg: StudyConfig) -> HeldOut:
    return heldout_set(source=cfg.source, patients=cfg.heldout_patients, days=cfg.heldout_days, seed=cfg.seed,
                       sensor=cfg.sensor, fit_days=cfg.heldout_fit_days)


def run_study(cfg: StudyConfig, *, test: HeldOut | None = None, cohort: list[PatientTrace] | None = None,
              progress: Callable[[str], None] | None = None) -> dict:
    """The federated model's scores on held-out patients, with its privacy per node."""
    nodes = build_nodes(cfg, cohort)
    test = heldout(cfg) if test is None else test
    per_round: list[float] = []

    def on_round(r: int, w: np.ndarray) -> None:
        per_round.append(metrics.rmse(model.predict(w, test.x)[:, 0], test.y_cgm[:, 0]))
        if progress:
            progress(f"round {r}: RMSE@30 {per_round[-1]:.2f}")

    final, privacy = federate(cfg, nodes, on_round=on_round)
    return {"config": asdict(cfg), "simulation": SIMULATION_LABEL,
            "nodes": {n.name: {"patients": n.patients, "windows": len(n.windows)} for n in nodes},
            "heldout_windows": len(test.x), "heldout_patients": test.patients, "rmse30_per_round": per_round,
            "privacy": privacy, "federated": score_forecast(model.predict(final, test.x), test)}


def baselines(cfg: StudyConfig, *, test: HeldOut | None = None, cohort: list[PatientTrace] | None = None,
              cheap: bool = True, pooled: bool = True) -> dict[str, dict[str, float]]:
    """Persistence, linear extrapolation, per-patient AR with insulin and carbs (fit on each held-out patient's
    first `heldout_fit_days`; these are `cheap`) and the `pooled` non-private model (centralised, clean data, the
    same epochs in total as the federation), all on the same held-out windows."""
    test = heldout(cfg) if test is None else test
    n = len(HORIZONS)
    out: dict[str, dict[str, float]] = {}
    if cheap:
        out["persistence"] = score_forecast(metrics.persistence(test.x[:, :model.HISTORY_STEPS], n), test)
        out["linear extrapolation"] = score_forecast(linear_extrapolation(test.x), test)
    if cheap and test.fit is not None and len(test.fit.x):
        fit = test.fit
        out["per-patient AR"] = score_forecast(
            per_patient_ar(fit.x, fit.y_cgm, fit.patient, test.x, test.patient, exogenous=False), test)
        out["per-patient AR with insulin and carbs"] = score_forecast(
            per_patient_ar(fit.x, fit.y_cgm, fit.patient, test.x, test.patient, exogenous=True), test)
    if not pooled:
        return out
    cohort = training_cohort(cfg) if cohort is None else cohort
    pool = _windows({p.name: p.series() for p in cohort})
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xCE]))
    w = model.init_weights(seed=cfg.seed)
    for _ in range(cfg.rounds * cfg.local_epochs):
        rows = _subsample(pool, cfg.windows_per_patient_epoch, rng)
        w = train_plain(w, pool.x[rows], pool.y[rows], epochs=1, lr=cfg.lr, seed=int(rng.integers(2 ** 31)),
                        batch_size=cfg.batch_size, hypo_weight=cfg.hypo_weight)
    out["pooled non-private (centralised, clean)"] = score_forecast(model.predict(w, test.x), test)
    return out
