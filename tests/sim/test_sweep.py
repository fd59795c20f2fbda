"""A reduced privacy-utility sweep: every setting and baseline in the CSV, goals in the markdown, a frontier plot,
resumption after an interruption; the device-release interface takes another design."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from federation import model
from federation.series import PatientSeries
from sim.baselines import linear_extrapolation
from sim.study import StudyConfig, resolve_design
from sim.sweep import run_sweep

BASE = StudyConfig(source="uva-padova", gateways=2, hospitals=1, days=0.6, heldout_patients=3, heldout_days=0.5,
                   heldout_fit_days=0.3, rounds=1, local_epochs=1, dp_epochs=2, patients_per_step=4)


def halved_readings(patients: list, *, epsilon_per_day: float, rng: np.random.Generator) -> list[PatientSeries]:
    """A toy design for the interface test: every other reading, clean (not a private design)."""
    out = []
    for p in patients:
        s = p.series()
        out.append(PatientSeries(times=s.times[::2], glucose=s.glucose[::2]))
    return out


def test_reduced_sweep_writes_every_output_and_resumes(tmp_path: Path) -> None:
    calls: list[str] = []
    rows = run_sweep(BASE, tmp_path, populations=(6,), devices=(("none", None), ("per-reading", 2304.0)),
                     dp_grid=(None, 4.0), progress=lambda msg, done, total: calls.append(f"{done}/{total}"))
    with open(tmp_path / "sweep.csv") as fh:
        table = list(csv.DictReader(fh))
    fed = [r for r in table if r["kind"] == "federated"]
    assert [(r["device_design"], r["device_epsilon_day"], r["dp_epsilon"]) for r in fed] == [
        ("none", "none", "none"), ("none", "none", "4"), ("per-reading", "2304", "none"), ("per-reading", "2304", "4")]
    models = {r["model"] for r in table if r["kind"] == "baseline"}
    assert models == {"persistence", "linear extrapolation", "per-patient AR", "per-patient AR with insulin and carbs",
                      "pooled non-private (centralised, clean)"}
    for r in fed:
        assert 0 < float(r["rmse30"]) < 200 and 0 <= float(r["clarke_ab30"]) <= 1
    dp_row = next(r for r in rows if r["kind"] == "federated" and r["dp_epsilon"] == 4.0)
    assert dp_row["dp_unit"] == "patient" and dp_row["epsilon_spent_max"] <= 4.0 + 1e-6
    assert all(p["unit"] == "patient" and p["delta"] == 1e-5 for p in dp_row["privacy"].values())
    md = (tmp_path / "sweep.md").read_text()
    assert "## Goals (issue 15)" in md and "non-private federated RMSE@30" in md and "SIMULATION MODE" in md
    page = (tmp_path / "sweep.html").read_text()
    assert page.startswith("<!doctype html>") and "<svg" in page and "src=" not in page  # self-contained
    assert calls[-1] == "6/6"
    # an interrupted sweep resumes: drop the last setting, run again, only that one is computed
    doc = json.loads((tmp_path / "sweep.json").read_text())
    last = max(i for i, r in enumerate(doc["rows"]) if r["kind"] == "federated")
    doc["rows"] = doc["rows"][:last] + doc["rows"][last + 1:]
    (tmp_path / "sweep.json").write_text(json.dumps(doc))
    again: list[str] = []
    rows2 = run_sweep(BASE, tmp_path, populations=(6,), devices=(("none", None), ("per-reading", 2304.0)),
                      dp_grid=(None, 4.0), progress=lambda msg, done, total: again.append(msg))
    assert len(rows2) == len(rows) and sum("device per-reading 2304/day, DP-SGD 4/patient" in m for m in again) == 1
    assert not any("baselines" in m or "pooled" in m for m in again)
    # resuming with another configuration (here a publicly pretrained start) would mix its rows with these: refused
    with pytest.raises(ValueError, match="another configuration \\(public_pretrain_days\\)"):
        run_sweep(replace(BASE, public_pretrain_days=1.0), tmp_path, populations=(6,), devices=(("none", None),),
                  dp_grid=(None,))


def test_another_device_design_plugs_in_by_name(tmp_path: Path) -> None:
    assert resolve_design("tests.sim.test_sweep:halved_readings") is halved_readings
    with pytest.raises(ValueError, match="unknown device design"):
        resolve_design("shuffled")
    rows = run_sweep(BASE, tmp_path, populations=(6,), devices=(("tests.sim.test_sweep:halved_readings", 8.0),),
                     dp_grid=(None,))
    fed = [r for r in rows if r["kind"] == "federated"]
    assert len(fed) == 1 and fed[0]["device_epsilon_day"] == 8.0 and 0 < fed[0]["rmse30"] < 200


def test_linear_extrapolation_follows_a_line() -> None:
    hist = np.tile(np.arange(24, dtype=float) * 2 + 100, (3, 1))  # +2 mg/dL per 5 min
    np.testing.assert_allclose(linear_extrapolation(hist), [[146 + 12, 146 + 24]] * 3)


def test_a_diverged_model_scores_nan_instead_of_crashing() -> None:
    from sim.scoring import score

    got = score(np.array([np.nan, 100.0]), np.array([100.0, 100.0]))
    assert np.isnan(got["rmse"]) and np.isnan(got["clarke_ab"])


def test_per_patient_ar_learns_each_patients_own_response_to_insulin() -> None:
    """Two patients whose glucose responds to the same insulin feature with opposite signs: the per-patient ARX fits
    each exactly from its own earlier windows; the AR without exogenous inputs cannot."""
    from federation import model
    from federation.features import FEATURE_NAMES
    from sim.baselines import per_patient_ar

    rng = np.random.default_rng(0)
    n = 200
    x = np.hstack([rng.uniform(80, 200, size=(2 * n, model.HISTORY_STEPS)),
                   rng.normal(0, 1, (2 * n, model.N_FEATURES))])
    col = model.HISTORY_STEPS + FEATURE_NAMES.index("insulin_effect60_mgdl")
    patient = np.repeat([0, 1], n)
    gain = np.where(patient == 0, 3.0, -5.0)
    y = x[:, [model.LAST_GLUCOSE]] + gain[:, None] * x[:, [col]] * np.array([[1.0, 2.0]])
    fit, test = np.arange(2 * n) % 2 == 0, np.arange(2 * n) % 2 == 1
    pred = per_patient_ar(x[fit], y[fit], patient[fit], x[test], patient[test], exogenous=True)
    np.testing.assert_allclose(pred, y[test], atol=0.5)  # ridge shrinks a little
    plain = per_patient_ar(x[fit], y[fit], patient[fit], x[test], patient[test], exogenous=False)
    assert np.abs(plain - y[test]).mean() > 2.0


def test_population_split_and_window_subsample() -> None:
    from sim.study import _subsample, split_patients

    assert split_patients(StudyConfig(patients=30)) == ([8, 7, 7], [8])
    assert split_patients(StudyConfig(patients=3000)) == ([750, 750, 750], [750])
    assert split_patients(StudyConfig(patients=4, hospitals=0, gateways=2)) == ([2, 2], [])
    from federation.windows import Windows

    w = Windows(np.zeros((10, 1)), np.zeros((10, 2)), np.array([0] * 7 + [1] * 3), ("a", "b"), np.arange(10))
    rows = _subsample(w, 2, np.random.default_rng(0))
    assert sorted(np.bincount(w.patient[rows]).tolist()) == [2, 2] and len(set(rows.tolist())) == 4


DAY_BASE = replace(BASE, days=1.0, heldout_days=1.0, heldout_fit_days=1.0)


def test_daily_release_arm_scores_on_the_sweeps_own_heldout_windows(tmp_path: Path) -> None:
    """The day-release rows (every epsilon, and the same model without privacy) land in the CSV with the unit, a goal
    row compares them with the non-private models, and resuming does not recompute them."""
    rows = run_sweep(DAY_BASE, tmp_path, populations=(6,), devices=(("none", None),), dp_grid=(None,),
                     day_release=(8.0, 1.0))
    day = {r["device_epsilon_day"]: r for r in rows if r["kind"] == "day-release"}
    assert set(day) == {None, 8.0, 1.0}
    assert day[8.0]["device_unit"] == "patient-day" and day[8.0]["device_delta"] == 1e-6
    assert day[8.0]["patient_days"] == 6.0  # 6 devices x 1 day, one release each
    for r in day.values():
        assert 0 < r["rmse30"] < 200 and r["dp_epsilon"] is None
    with open(tmp_path / "sweep.csv") as fh:
        table = [r for r in csv.DictReader(fh) if r["kind"] == "day-release"]
    assert {(r["device_design"], r["device_epsilon_day"], r["device_unit"]) for r in table} == {
        ("none", "none", "none"), ("day-stats", "8", "patient-day"), ("day-stats", "1", "patient-day")}
    md = (tmp_path / "sweep.md").read_text()
    assert "sufficient-statistics release (day-stats, gram-gauss) at 8 per patient-day" in md
    assert "at 1 per patient-day" in md  # every budget at or under 8 gets its goal row
    assert "<svg" in (tmp_path / "sweep.html").read_text()
    again: list[str] = []
    run_sweep(DAY_BASE, tmp_path, populations=(6,), devices=(("none", None),), dp_grid=(None,),
              day_release=(8.0, 1.0), progress=lambda msg, done, total: again.append(msg))
    assert not any("sufficient-statistics" in m for m in again)


def test_daily_release_forecasts_line_up_with_the_heldout_windows() -> None:
    """A forecaster with all coefficients 0 predicts 'no change': through the (patient, time) matching it must give
    exactly persistence on the sweep's held-out windows; a held-out set from another seed is refused."""
    from federation import day_features as F
    from gateway.day_stats import LinearForecaster
    from sim import sweep_day
    from sim.study import heldout

    test = heldout(DAY_BASE)
    held = sweep_day.heldout_cohort(patients=DAY_BASE.heldout_patients, seed=DAY_BASE.seed, days=2)
    zero = LinearForecaster(np.zeros((F.N_FEATURES, 2)), 0.0, 0)
    pred = sweep_day.predict_heldout(zero, held, test)
    last = test.x[:, model.HISTORY_STEPS - 1]
    np.testing.assert_allclose(pred, np.stack([last, last], axis=1))
    other = sweep_day.heldout_cohort(patients=DAY_BASE.heldout_patients, seed=DAY_BASE.seed + 1, days=2)
    with pytest.raises(RuntimeError, match="differ|missing"):
        sweep_day.predict_heldout(zero, other, test)
    with pytest.raises(ValueError, match="whole days"):
        sweep_day.whole_days(0.6, "days")


def test_sweeps_run_in_parallel_directories_merge_into_one(tmp_path: Path) -> None:
    from dataclasses import asdict

    from sim.sweep import merge

    def row(n: int, rmse: float) -> dict:
        return {"kind": "baseline", "model": "persistence", "patients": n, "rmse30": rmse, "alert_sens30": 0.5}

    for n, rmse in ((6, 18.0), (60, 17.0)):
        (tmp_path / f"s{n}").mkdir()
        (tmp_path / f"s{n}" / "sweep.json").write_text(json.dumps(
            {"config": json.loads(json.dumps(asdict(BASE), default=str)), "rows": [row(n, rmse)]}))
    rows = merge(tmp_path / "all", [tmp_path / "s6", tmp_path / "s60", tmp_path / "s6"], BASE)
    assert sorted((r["patients"], r["rmse30"]) for r in rows) == [(6, 18.0), (60, 17.0)]  # no duplicate
    with open(tmp_path / "all" / "sweep.csv") as fh:
        assert sorted(r["patients"] for r in csv.DictReader(fh)) == ["6", "60"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "sweep.json").write_text(json.dumps(
        {"config": json.loads(json.dumps(asdict(replace(BASE, rounds=9)), default=str)), "rows": [row(7, 1.0)]}))
    with pytest.raises(ValueError, match="another configuration \\(rounds\\)"):
        merge(tmp_path / "all", [tmp_path / "other"], BASE)
    with pytest.raises(ValueError, match="not a sweep result"):
        merge(tmp_path / "all", [tmp_path / "missing"], BASE)
