"""Study arm for the patient-day device release: every virtual device releases each day, the node fits on the sum.

``simulate_cohort`` runs the UVA/Padova cohort with exactly the arguments of ``sim.patients`` (the same
patients, seeds and traces) and keeps what ``PatientTrace`` does not carry on this branch: insulin delivered and
carbs announced per 5-min step. ``device_stats`` runs the device's own code (``device.day_release.statistics``
and ``privatise``) on every patient-day, vectorised, and sums the decoded releases (``gateway.day_stats``):
that sum is what a node trains on. ``heldout`` and ``score`` reuse ``sim.evaluate``'s held-out patients,
windows and scoring. Baselines on the same data: the same model without privacy, persistence, and today's
event-level LDP (every reading privatised at epsilon/288) feeding the MLP of ``federation.model``.

Privacy randomness here is ``PrivacyRNG.simulation(seed)``: reproducible and NOT private (SIMULATION_LABEL).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from device import day_release as R
from federation import day_features as F
from federation.clock import DEFAULT_SIM_START
from federation.model import HISTORY_STEPS
from federation.privacy_rng import SIMULATION_LABEL, PrivacyRNG
from gateway.day_stats import DayStats, LinearForecaster, fit_forecaster
from sim.evaluate import HeldOut, heldout_set, score_forecast

PUBLIC_SEED = 20_261_203  # the public derivation of the feature scales and the trace cap
HELDOUT_SEED_OFFSET = 1_000_003  # as sim.patients.heldout_patients
CHUNK_PATIENTS = 250


@dataclass(frozen=True)
class CohortDays:
    """Patients x (days * 288) grids from midnight (UTC) of the first day."""

    names: tuple[str, ...]
    groups: tuple[str, ...]
    start: int  # unix seconds of the first grid step (a UTC midnight)
    glucose: np.ndarray  # CGM mg/dL, NaN where no reading
    bg: np.ndarray  # true blood glucose mg/dL
    insulin: np.ndarray  # units delivered per step
    carbs: np.ndarray  # grams announced per step

    @property
    def days(self) -> int:
        return self.glucose.shape[1] // F.STEPS_PER_DAY

    def take(self, n: int) -> CohortDays:
        return CohortDays(self.names[:n], self.groups[:n], self.start, self.glucose[:n], self.bg[:n],
                          self.insulin[:n], self.carbs[:n])

    def day_rows(self, sl: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(patients in ``sl``) x days as rows of (288,) grids: glucose, insulin, carbs."""
        shape = (-1, F.STEPS_PER_DAY)
        return (self.glucose[sl].reshape(shape), self.insulin[sl].reshape(shape), self.carbs[sl].reshape(shape))


def simulate_cohort(patients: int, *, days: int, seed: int, sensor: str = "dexcom-g7", heldout: bool = False,
                    start: int = DEFAULT_SIM_START) -> CohortDays:
    """Training patients 0 .. n-1 (as ``sim.patients.training_patients``) or held-out patients (as
    ``heldout_patients``), with insulin and carbs; ``start`` must be a UTC midnight."""
    from sim.cohort import make_cohort, simulate

    if start % 86400:
        raise ValueError(f"start must be a UTC midnight, got {start}")
    if heldout:
        held_seed = seed + HELDOUT_SEED_OFFSET
        cohort, sim_seed = make_cohort(patients, seed=held_seed, published_first=False), held_seed
    else:
        cohort, sim_seed = make_cohort(patients, seed=seed).take(range(patients)), seed
    tr = simulate(cohort, days=days, seed=sim_seed, sensor=sensor,
                  start=datetime.fromtimestamp(start, UTC).replace(tzinfo=None))
    if tr.interval_min * 60 != F.GRID_SECONDS:
        raise ValueError(f"sensor {sensor!r} samples every {tr.interval_min} min; the day release needs 5")
    f64 = np.float64
    return CohortDays(tuple(tr.subjects), tuple(tr.groups), start, tr.cgm.astype(f64), tr.bg.astype(f64),
                      tr.insulin.astype(f64), tr.carbs.astype(f64))


def device_stats(cohort: CohortDays, *, mechanism: str, epsilon: float, delta: float = R.DEFAULT_DELTA,
                 rng: PrivacyRNG, pre_stats: np.ndarray | None = None) -> DayStats:
    """Every device releases every day with the device code; returns the summed, decoded releases.

    ``pre_stats`` may pass the gram mechanisms' pre-noise statistics (``gram_statistics``: deterministic, rows
    patient-major), so several budgets reuse them; the noise is always drawn afresh.
    """
    params = R.release_params(mechanism=mechanism, epsilon=epsilon, delta=delta)
    out = DayStats("window" if mechanism == "window-sample" else "gram")
    n, days = len(cohort.names), cohort.days
    if pre_stats is not None and (mechanism == "window-sample" or len(pre_stats) != n * days):
        raise ValueError("pre_stats: only for gram mechanisms, one row per patient-day of the cohort")
    for lo in range(0, n, CHUNK_PATIENTS):
        sl = slice(lo, min(n, lo + CHUNK_PATIENTS))
        if pre_stats is not None:
            x = pre_stats[sl.start * days: sl.stop * days]
        else:
            x = R.statistics(*cohort.day_rows(sl), mechanism=mechanism, rng=rng)
        out.add_values(R.privatise(x, params=params, rng=rng), params=params)
    return out


def gram_statistics(cohort: CohortDays) -> np.ndarray:
    """The clipped per-day svec(G) of every patient-day (patients*days, SVEC_DIM): the gram mechanisms' input."""
    parts = [R.svec(R.day_grams(*cohort.day_rows(slice(lo, lo + CHUNK_PATIENTS))))
             for lo in range(0, len(cohort.names), CHUNK_PATIENTS)]
    return np.concatenate(parts)


def clean_day_stats(cohort: CohortDays) -> DayStats:
    """The same model's statistics without privacy: every window of every day, no weights, no caps."""
    total = np.zeros((F.DIM, F.DIM))
    for lo in range(0, len(cohort.names), CHUNK_PATIENTS):
        z, valid = F.window_vectors(*cohort.day_rows(slice(lo, lo + CHUNK_PATIENTS)), day_only=True)
        zv = z[valid]
        total += zv.T @ zv
    return DayStats("gram", len(cohort.names) * cohort.days, R.svec(total), 0.0)


@dataclass(frozen=True)
class HeldOutDays:
    """``sim.evaluate``'s held-out windows together with the same patients' insulin and carbs."""

    data: HeldOut
    cohort: CohortDays


def heldout(*, patients: int, days: int, seed: int, sensor: str = "dexcom-g7") -> HeldOutDays:
    """The held-out patients of ``sim.evaluate.heldout_set``; checks both sources give the same windows."""
    data = heldout_set(source="uva-padova", patients=patients, days=days, seed=seed, sensor=sensor)
    cohort = simulate_cohort(patients, days=days, seed=seed, sensor=sensor, heldout=True)
    _, valid = F.window_vectors(cohort.glucose, cohort.insulin, cohort.carbs, day_only=False)
    last = cohort.glucose[valid]
    # x is the 2-h glucose history followed by the forecaster's features: the last reading is column H - 1
    if len(last) != len(data.x) or not np.array_equal(last, data.x[:, HISTORY_STEPS - 1]):
        raise RuntimeError("held-out windows differ between sim.evaluate and the day-release features")
    return HeldOutDays(data, cohort)


def predict(forecaster: LinearForecaster, held: HeldOutDays) -> np.ndarray:
    """Forecasts (windows, 2) mg/dL for every held-out window, in ``held.data``'s order."""
    c = held.cohort
    parts = [forecaster.predict(c.glucose[i], c.insulin[i], c.carbs[i])[0] for i in range(len(c.names))]
    return np.concatenate(parts)


def score(forecaster: LinearForecaster, held: HeldOutDays) -> dict[str, float]:
    """``sim.evaluate.score_forecast`` of the forecaster on the held-out windows (rmse30 against CGM, ...)."""
    return score_forecast(predict(forecaster, held), held.data)


def run_arm(cohort: CohortDays, held: HeldOutDays, *, mechanism: str, epsilon: float,
            delta: float = R.DEFAULT_DELTA, seed: int, ridge_scale: float | None = None) -> dict:
    """One arm end to end: releases, fit, held-out scores, and the guarantee it ran under."""
    rng = PrivacyRNG.simulation(seed)
    stats = device_stats(cohort, mechanism=mechanism, epsilon=epsilon, delta=delta, rng=rng)
    model = fit_forecaster(stats, ridge_scale=ridge_scale)
    p = R.release_params(mechanism=mechanism, epsilon=epsilon, delta=delta)
    return {"mechanism": mechanism, "epsilon_per_patient_day": epsilon, "delta": p.delta, "unit": R.UNIT,
            "devices": len(cohort.names), "patient_days": stats.releases, "scores": score(model, held),
            "randomness": SIMULATION_LABEL}


# ---------------------------------------------------------------------------------------------------------
# Baselines on the same data.


def persistence_scores(held: HeldOutDays) -> dict[str, float]:
    from federation import metrics

    return score_forecast(metrics.persistence(held.data.x, 2), held.data)


def _mlp_windows(glucose: np.ndarray, *, max_windows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from federation.windows import make_windows

    xs, ys = zip(*(make_windows(g) for g in glucose), strict=True)
    x, y = np.concatenate(xs), np.concatenate(ys)
    if len(x) > max_windows:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), max_windows, replace=False))
        x, y = x[keep], y[keep]
    return x, y


def mlp_scores(cohort: CohortDays, held: HeldOutDays, *, epsilon_per_day: float | None, seed: int,
               max_windows: int = 60_000, epochs: int = 5) -> dict[str, float]:
    """Today's path: the MLP of ``federation.model`` (2 h of CGM only) trained without DP-SGD on windows of readings
    privatised one by one (Hybrid, epsilon_per_day/288 each, event-level LDP as ``sim.study``), or on clean CGM
    when ``epsilon_per_day`` is None. Windows are subsampled to ``max_windows`` (2 shared cores)."""
    import torch

    from device.ldp import LDPSpec, privatize
    from device.sensor import SENSOR_RANGE
    from federation import model
    from sim.baselines import train_plain

    glucose = cohort.glucose.copy()
    if epsilon_per_day is not None:
        spec = LDPSpec(mechanism="hybrid", epsilon=epsilon_per_day / F.STEPS_PER_DAY, lo=SENSOR_RANGE[0],
                       hi=SENSOR_RANGE[1])
        seen = ~np.isnan(glucose)
        glucose[seen] = privatize(glucose[seen], spec=spec, rng=np.random.default_rng(seed))
    x, y = _mlp_windows(glucose, max_windows=max_windows, seed=seed)
    torch.set_num_threads(1)
    weights = train_plain(model.init_weights(seed=seed), x, y, epochs=epochs, seed=seed, lr=0.1, batch_size=256)
    return score_forecast(model.predict(weights, held.data.x), held.data)


def public_constants(*, seed: int = PUBLIC_SEED, days: int = 7) -> dict[str, object]:
    """Recompute the spec's feature scales (RMS over the 30 published UVA/Padova subjects, simulated under a public
    seed) and the day trace cap (median clipped day trace): what ``federation.day_features.SCALES`` and
    ``device.day_release.TRACE_CAP`` were rounded from."""
    cohort = simulate_cohort(30, days=days, seed=seed)
    z, valid = F.window_vectors(cohort.glucose, cohort.insulin, cohort.carbs, day_only=True)
    raw = z[valid] * F.SCALES
    rms = np.sqrt((raw ** 2).mean(axis=0))
    rms[0] = 1.0
    zs = (z * F.SCALES / rms).reshape(-1, F.STEPS_PER_DAY, F.DIM)
    norm2 = np.einsum("dki,dki->dk", zs, zs)
    w = np.minimum(1.0, R.WINDOW_CLIP_SQ / np.maximum(norm2, 1e-300))
    traces = np.einsum("dk,dk->d", w, norm2)
    return {"scales": rms, "trace_median": float(np.median(traces))}
