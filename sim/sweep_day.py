"""The sweep's per-patient-day sufficient-statistics arm: every training patient's device releases each day's
privatised Gram (`device.day_release`, `gram-gauss`, epsilon per patient-day, delta 1e-6), the nodes sum the decoded
releases and fit the ridge forecaster (`gateway.day_stats`), scored on the sweep's own held-out windows.

This is the design of docs/ldp-release.md run inside `wearfed sweep` so its goal row is measured on the same
held-out patients and windows as the federated MLP and the baselines. All of a population's patients are devices
here (the MLP arm keeps hospitals clean; hospitals hold no device, so for this arm they would add clean statistics
that are not patient-day private: left out). The model is a linear forecaster (26 coefficients), not the MLP.
Randomness: `PrivacyRNG.simulation` (seeded, `SIMULATION_LABEL`).
"""

from __future__ import annotations

import numpy as np

from device import day_release as R
from federation import model
from federation.privacy_rng import PrivacyRNG
from gateway.day_stats import LinearForecaster, fit_forecaster
from sim.evaluate import HeldOut, score_forecast
from sim.ldp_release import CohortDays, clean_day_stats, device_stats, gram_statistics, simulate_cohort

MECHANISM = "gram-gauss"
LABEL = "day-stats"  # the device_design name in the sweep's rows


def whole_days(days: float, what: str) -> int:
    if days < 1 or days != int(days):
        raise ValueError(f"{what}: the day release needs whole days, got {days}")
    return int(days)


def heldout_cohort(*, patients: int, seed: int, days: int) -> CohortDays:
    """The sweep's held-out patients (fit and scored days together) with their insulin and carbs."""
    return simulate_cohort(patients, days=days, seed=seed, heldout=True)


def predict_heldout(forecaster: LinearForecaster, held: CohortDays, test: HeldOut) -> np.ndarray:
    """Forecasts (len(test.x), 2) mg/dL in `test`'s window order, matched by (patient, time of the last reading);
    refuses if the two simulations' windows or readings differ."""
    preds, keys = [], []
    for i in range(len(held.names)):
        pred, valid = forecaster.predict(held.glucose[i], held.insulin[i], held.carbs[i])
        t = held.start + np.flatnonzero(valid).astype(np.int64) * 300
        preds.append(pred)
        keys.append(np.stack([np.full(len(t), i, dtype=np.int64), t], axis=1))
    pred, key = np.concatenate(preds), np.concatenate(keys)
    index = {(int(p), int(t)): k for k, (p, t) in enumerate(key)}
    try:
        rows = np.array([index[(int(p), int(t))] for p, t in zip(test.patient, test.t, strict=True)])
    except KeyError as e:
        raise RuntimeError(f"held-out window {e} missing from the day-release features") from None
    last = np.array([held.glucose[int(p), (int(t) - held.start) // 300] for p, t in zip(test.patient, test.t,
                                                                                       strict=True)])
    if not np.allclose(last, test.x[:, model.HISTORY_STEPS - 1]):
        raise RuntimeError("held-out readings differ between sim.evaluate and the day-release cohort")
    return pred[rows]


def day_release_scores(*, patients: int, days: float, seed: int, test: HeldOut, held: CohortDays,
                       epsilons: list[float]) -> dict[float | None, dict]:
    """{epsilon per patient-day: scores} for every epsilon, and {None: scores} of the same model without privacy."""
    cohort = simulate_cohort(patients, days=whole_days(days, "days"), seed=seed)
    pre = gram_statistics(cohort)
    out: dict[float | None, dict] = {None: score_forecast(predict_heldout(fit_forecaster(clean_day_stats(cohort)),
                                                                          held, test), test)}
    for k, eps in enumerate(epsilons):
        rng = PrivacyRNG.simulation(np.random.SeedSequence([seed, 0xDA7, k]))
        stats = device_stats(cohort, mechanism=MECHANISM, epsilon=eps, rng=rng, pre_stats=pre)
        p = R.release_params(mechanism=MECHANISM, epsilon=eps, delta=R.DEFAULT_DELTA)
        out[eps] = {**score_forecast(predict_heldout(fit_forecaster(stats), held, test), test),
                    "device_delta": p.delta, "patient_days": float(stats.releases)}
    return out

