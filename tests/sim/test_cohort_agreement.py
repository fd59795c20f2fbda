"""Agreement with simglucose 0.2.11 itself: blood glucose traces and the sensor noise sequence."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("simglucose")

from bench.cohort import (  # noqa: E402
    agreement_meals,
    meal_events,
    ours_agreement,
    ours_as_simglucose,
    rmse,
    run_simglucose,
)
from sim.cohort import get_sensor, load_subjects  # noqa: E402
from sim.cohort.sensors import noise_from_innovations, noise_steps_needed  # noqa: E402

SUBJECTS = ["child#001", "adolescent#001", "adult#001"]


@pytest.mark.parametrize(("sensor", "subjects", "days"), [
    ("simglucose-guardianrt", SUBJECTS, 1.0),  # 5-min control loop, one subject per age group
    ("simglucose-dexcom", ["child#007"], 0.5),  # 3-min control loop
])
def test_blood_glucose_agrees_with_simglucose(sensor: str, subjects: list[str], days: float) -> None:
    cohort = load_subjects(subjects)
    seed = 7
    plan = agreement_meals(cohort, days, seed)
    ours = ours_agreement(cohort, days, seed, sensor=sensor)
    for i, name in enumerate(subjects):
        events = meal_events(plan, i)
        assert events, "the agreement day must contain meals"
        theirs = run_simglucose(name, events, days, sensor=sensor)
        mine = ours_as_simglucose(ours, i)
        assert mine["bg"].shape == theirs["bg"].shape
        assert rmse(mine["bg"], theirs["bg"]) < 2.0, name
        assert rmse(mine["plasma"], theirs["plasma"]) < 2.0, name
        np.testing.assert_allclose(mine["insulin"], theirs["insulin"], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("sensor", ["Dexcom", "GuardianRT", "Navigator"])
def test_noise_sequence_matches_simglucose(sensor: str) -> None:
    from simglucose.sensor.cgm import CGMSensor
    from simglucose.sensor.noise_gen import CGMNoise

    params = CGMSensor.withName(sensor)._params
    profile = get_sensor(f"simglucose-{sensor.lower()}")
    count = 200
    theirs = CGMNoise(params, seed=42)
    expected = np.array([next(theirs) for _ in range(count)])
    z = np.random.RandomState(42).randn(noise_steps_needed(count, profile.interval_min))[None, :]
    ours = noise_from_innovations(z, profile.interval_min, profile.noise_params, count)[0]
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-9)
