"""Tests for sim.ldp_release: the study arm runs the device code on every patient-day, lines up with sim.evaluate's
held-out windows, and its non-private twin learns something persistence does not."""

from __future__ import annotations

import numpy as np
import pytest

from device import day_release as R
from federation.privacy_rng import SIMULATION_LABEL, PrivacyRNG
from gateway.day_stats import fit_forecaster
from sim import ldp_release as S


@pytest.fixture(scope="module")
def cohort() -> S.CohortDays:
    return S.simulate_cohort(8, days=2, seed=7)


@pytest.fixture(scope="module")
def held() -> S.HeldOutDays:
    return S.heldout(patients=10, days=2, seed=7)


def test_cohort_matches_sim_patients(cohort: S.CohortDays) -> None:
    from federation.clock import DEFAULT_SIM_START
    from sim.patients import training_patients

    pats = training_patients("uva-padova", 8, days=2, seed=7, start=DEFAULT_SIM_START)
    np.testing.assert_array_equal(np.stack([p.cgm for p in pats]).astype(np.float64), cohort.glucose)
    assert cohort.days == 2 and cohort.insulin.shape == cohort.glucose.shape
    assert cohort.carbs.sum() > 0 and (cohort.insulin > 0).all()


def test_precomputed_statistics_give_the_device_path(cohort: S.CohortDays) -> None:
    pre = S.gram_statistics(cohort)
    assert pre.shape == (16, R.SVEC_DIM)
    a = S.device_stats(cohort, mechanism="gram-gauss", epsilon=8.0, rng=PrivacyRNG.simulation(3))
    b = S.device_stats(cohort, mechanism="gram-gauss", epsilon=8.0, rng=PrivacyRNG.simulation(3), pre_stats=pre)
    np.testing.assert_array_equal(a.total, b.total)
    assert a.releases == 16
    with pytest.raises(ValueError, match="pre_stats"):
        S.device_stats(cohort, mechanism="gram-gauss", epsilon=8.0, rng=PrivacyRNG.simulation(3),
                       pre_stats=pre[:3])


def test_clean_same_model_beats_persistence(cohort: S.CohortDays, held: S.HeldOutDays) -> None:
    clean = S.score(fit_forecaster(S.clean_day_stats(cohort)), held)
    assert clean["rmse30"] < 0.9 * S.persistence_scores(held)["rmse30"]


@pytest.mark.parametrize("mechanism", R.MECHANISMS)
def test_run_arm_reports_its_guarantee(cohort: S.CohortDays, held: S.HeldOutDays, mechanism: str) -> None:
    out = S.run_arm(cohort, held, mechanism=mechanism, epsilon=8.0, seed=1)
    assert out["unit"] == "patient-day" and out["patient_days"] == 16 and out["randomness"] == SIMULATION_LABEL
    assert out["delta"] == (0.0 if mechanism == "gram-laplace" else R.DEFAULT_DELTA)
    assert np.isfinite(out["scores"]["rmse30"])


@pytest.mark.slow
def test_goal_row_three_thousand_devices_at_eight_per_patient_day() -> None:
    """Issue 15's fourth goal row on the sweep's held-out set: within 20% of the same model without privacy."""
    held = S.heldout(patients=15, days=3, seed=7)
    cohort = S.simulate_cohort(3000, days=7, seed=7)
    clean = S.score(fit_forecaster(S.clean_day_stats(cohort)), held)["rmse30"]
    pre = S.gram_statistics(cohort)
    private = [S.score(fit_forecaster(S.device_stats(cohort, mechanism="gram-gauss", epsilon=8.0, pre_stats=pre,
                                                     rng=PrivacyRNG.simulation(seed))), held)["rmse30"]
               for seed in (1, 2)]
    assert max(private) < S.persistence_scores(held)["rmse30"]
    assert np.mean(private) < 1.2 * clean


@pytest.mark.slow
def test_spec_constants_come_from_the_public_derivation() -> None:
    from federation import day_features as F

    out = S.public_constants()
    np.testing.assert_allclose(out["scales"], F.SCALES, rtol=0.05)  # rounded to 2 significant digits
    assert out["trace_median"] == pytest.approx(R.TRACE_CAP, rel=0.05)
