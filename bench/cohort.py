"""Cohort simulator vs simglucose: agreement per subject and patient-days per second, same workload.

Runs all 30 published subjects for one day through simglucose 0.2.11 (its scipy dopri5 patient, BBController,
Insulet pump, a noise-free GuardianRT-cadence sensor, a fixed meal schedule drawn from our random scenario)
and through ``sim.cohort`` with the same meals, controller and noise-free sensor; prints a per-subject table
of BG RMSE, then times a large cohort of ours and reports its peak memory. Last line:
``cohort: patient_days_per_s=... simglucose_patient_days_per_s=... speedup=... bg_rmse_max=... subjects=30``.

Usage: ``python -m bench.cohort [--patients 1000] [--days 14] [--subjects 30]`` (needs simglucose).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
import warnings
from datetime import datetime, timedelta

import numpy as np

from sim.cohort.params import Cohort, load_subjects
from sim.cohort.resample import make_cohort
from sim.cohort.scenario import MealPlan, random_meals
from sim.cohort.sensors import get_sensor
from sim.cohort.simulate import CohortTraces, simulate, subject_streams

START = datetime(2025, 1, 1)
AGREEMENT_SENSOR = "simglucose-guardianrt"
SIMGLUCOSE_SENSOR = {"simglucose-guardianrt": "GuardianRT", "simglucose-dexcom": "Dexcom",
                     "simglucose-navigator": "Navigator"}


def meal_events(plan: MealPlan, subject: int) -> list[tuple[int, float]]:
    """One subject's meals as (minute, grams), grams summed per minute."""
    sel = plan.patient == subject
    merged: dict[int, float] = {}
    for m, g in zip(plan.minute[sel].tolist(), plan.grams[sel].tolist(), strict=True):
        merged[m] = merged.get(m, 0.0) + g
    return sorted(merged.items())


def run_simglucose(
    name: str, events: list[tuple[int, float]], days: float, sensor: str = AGREEMENT_SENSOR
) -> dict[str, np.ndarray]:
    """simglucose's own closed loop for one subject with a noise-free sensor; arrays per control step."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    from simglucose.actuator.pump import InsulinPump
    from simglucose.controller.basal_bolus_ctrller import BBController
    from simglucose.patient.t1dpatient import T1DPatient
    from simglucose.sensor.cgm import CGMSensor
    from simglucose.simulation.env import T1DSimEnv
    from simglucose.simulation.scenario import CustomScenario

    class TrueSensor(CGMSensor):
        """simglucose's CGMSensor without noise: clipped Gsub at sample times, held in between."""

        def measure(self, patient: T1DPatient) -> float:
            if patient.t % self.sample_time == 0:
                value = min(max(patient.observation.Gsub, self._params["min"]), self._params["max"])
                self._last_CGM = value
            return self._last_CGM

    scenario = CustomScenario(start_time=START, scenario=[(timedelta(minutes=m), g) for m, g in events])
    patient = T1DPatient.withName(name)
    env = T1DSimEnv(patient, TrueSensor.withName(SIMGLUCOSE_SENSOR[sensor]), InsulinPump.withName("Insulet"),
                    scenario)
    ctrl = BBController()
    ctrl.reset()
    obs, reward, done, info = env.reset()
    plasma = [patient.state[3] / patient._params.Vg]
    while env.time < START + timedelta(days=days):
        action = ctrl.policy(obs, reward, done, **info)
        obs, reward, done, info = env.step(action)
        plasma.append(info["patient_state"][3] / patient._params.Vg)
    return {
        "bg": np.asarray(env.BG_hist, dtype=float),
        "cgm": np.asarray(env.CGM_hist, dtype=float),
        "insulin": np.asarray(env.insulin_hist, dtype=float),
        "plasma": np.asarray(plasma, dtype=float),
    }


def ours_as_simglucose(traces: CohortTraces, i: int) -> dict[str, np.ndarray]:
    """Our subject ``i`` in simglucose's bookkeeping: per-step means of per-minute interstitial glucose."""
    assert traces.minute_ig is not None and traces.minute_bg is not None
    s = traces.interval_min
    steps = traces.bg.shape[1]
    after = traces.minute_ig[i, 1:].reshape(steps, s).mean(axis=1)
    return {
        "bg": np.concatenate([[traces.minute_ig[i, 0]], after]),
        "plasma": traces.minute_bg[i, ::s],
        "insulin": traces.insulin[i] / s,
    }


def agreement_meals(cohort: Cohort, days: float, seed: int) -> MealPlan:
    """The fixed meal schedule both simulators get: our random scenario for these subjects and seed."""
    meal_rngs = subject_streams(seed, len(cohort))[0]
    return random_meals(meal_rngs, int(round(days * 1440)))


def ours_agreement(cohort: Cohort, days: float, seed: int, sensor: str = AGREEMENT_SENSOR) -> CohortTraces:
    """Our simulator on the agreement workload (noise-free ideal sensor, fixed meals, per-minute record)."""
    plan = agreement_meals(cohort, days, seed)
    return simulate(cohort, days=days, seed=seed, sensor=get_sensor(sensor).ideal(), meals=plan,
                    start=START, record_minutes=True)


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=1000, help="cohort size for our throughput run")
    ap.add_argument("--days", type=float, default=14.0, help="days for our throughput run")
    ap.add_argument("--subjects", type=int, default=30, help="published subjects run through simglucose")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    cohort = load_subjects()
    cohort = cohort.take(range(min(args.subjects, len(cohort))))
    plan = agreement_meals(cohort, 1.0, args.seed)

    tic = time.perf_counter()
    ours = ours_agreement(cohort, 1.0, args.seed)
    ours_agree_s = time.perf_counter() - tic

    print(f"{'subject':<16}{'meals_g':>8}{'BG_rmse':>9}{'plasma_rmse':>12}{'max_abs':>9}{'U_ours':>8}{'U_sg':>8}"
          f"{'sg_s':>7}")
    worst, sg_seconds = 0.0, 0.0
    for i, name in enumerate(cohort.names):
        events = meal_events(plan, i)
        tic = time.perf_counter()
        theirs = run_simglucose(name, events, 1.0)
        sg_seconds += (took := time.perf_counter() - tic)
        mine = ours_as_simglucose(ours, i)
        r_bg, r_pl = rmse(mine["bg"], theirs["bg"]), rmse(mine["plasma"], theirs["plasma"])
        worst = max(worst, r_bg, r_pl)
        worst_abs = np.max(np.abs(mine["bg"] - theirs["bg"]))
        units_ours = mine["insulin"].sum() * ours.interval_min
        units_theirs = theirs["insulin"].sum() * ours.interval_min
        print(f"{name:<16}{sum(g for _, g in events):>8.0f}{r_bg:>9.4f}{r_pl:>12.4f}{worst_abs:>9.4f}"
              f"{units_ours:>8.2f}{units_theirs:>8.2f}{took:>7.2f}")
    theirs_rate = len(cohort) / sg_seconds
    print(f"agreement: {len(cohort)} subjects x 1 day, simglucose {sg_seconds:.1f} s, "
          f"ours {ours_agree_s:.2f} s")

    tic = time.perf_counter()
    big = make_cohort(args.patients, seed=args.seed)
    print(f"cohort build: {args.patients} subjects (30 published + resampled, screened) "
          f"in {time.perf_counter() - tic:.1f} s")
    tic = time.perf_counter()
    simulate(big, days=args.days, seed=args.seed, sensor="dexcom-g7", noise=False)
    big_s = time.perf_counter() - tic
    ours_rate = args.patients * args.days / big_s
    print(f"throughput: {args.patients} patients x {args.days:g} days (dexcom-g7, noise-free) "
          f"in {big_s:.1f} s")

    tracemalloc.start()
    simulate(big, days=args.days, seed=args.seed, sensor="dexcom-g7")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"peak memory (tracemalloc, {args.patients} patients x {args.days:g} days, dexcom-g7 with noise): "
          f"{peak / 2**20:.0f} MiB")
    print(f"cohort: patient_days_per_s={ours_rate:.1f} simglucose_patient_days_per_s={theirs_rate:.4f} "
          f"speedup={ours_rate / theirs_rate:.0f} bg_rmse_max={worst:.4f} subjects={len(cohort)}")


if __name__ == "__main__":
    main()
