"""Cohort simulator: parameters, determinism, shapes, sensor wear and noise, resampling, Parquet, arguments."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sim.cohort import (
    GROUPS,
    MODEL_VERSION,
    SENSOR_PROFILES,
    fixed_meals,
    generate_cohort,
    get_sensor,
    load_subjects,
    make_cohort,
    read_cohort,
    read_patient,
    resample_group,
    simulate,
)
from sim.cohort.model import PatientModel, initial_state
from sim.cohort.scenario import MEAL_PROBABILITY, TIME_HIGH_MIN, TIME_LOW_MIN, random_meals
from sim.cohort.sensors import build_stream
from sim.cohort.simulate import subject_streams


def _runs(mask: np.ndarray) -> list[tuple[bool, int]]:
    """Run-length encoding of a boolean vector as (value, length) pairs."""
    edges = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    bounds = np.concatenate([[0], edges, [mask.size]])
    return [(bool(mask[a]), int(b - a)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def test_published_subjects_load_and_rest_at_steady_state() -> None:
    cohort = load_subjects()
    assert len(cohort) == 30
    assert sorted(set(cohort.groups)) == sorted(GROUPS)
    assert all(cohort.groups.count(g) == 10 for g in GROUPS)
    assert cohort.params["BW"][cohort.names.index("adolescent#001")] == pytest.approx(68.706)
    model = PatientModel(cohort.params)
    basal = cohort.params["u2ss"] * cohort.params["BW"] / 6000.0
    dx = model.derivatives(initial_state(cohort.x0), np.zeros(30), basal * model.insulin_scale,
                           model.gut_terms(np.zeros(30)))
    assert np.abs(dx).max() < 1e-8
    np.testing.assert_allclose(model.plasma_glucose(initial_state(cohort.x0)), cohort.params["Gb"])


def test_same_seed_same_traces_other_seed_other_traces() -> None:
    cohort = make_cohort(4, seed=1)
    a = simulate(cohort, days=0.5, seed=11)
    b = simulate(cohort, days=0.5, seed=11)
    c = simulate(cohort, days=0.5, seed=12)
    for name in ("bg", "ig", "cgm", "carbs", "insulin"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.carbs, c.carbs)
    assert a.metadata["seed"] == 11 and a.metadata["model_version"] == MODEL_VERSION


def test_subject_trace_does_not_depend_on_cohort_size() -> None:
    small = simulate(make_cohort(2, seed=3), days=0.5, seed=5)
    large = simulate(make_cohort(5, seed=3), days=0.5, seed=5)
    np.testing.assert_array_equal(small.cgm, large.cgm[:2])
    np.testing.assert_array_equal(small.bg, large.bg[:2])


@pytest.mark.parametrize("sensor", sorted(SENSOR_PROFILES))
def test_shapes_follow_the_sensor_interval(sensor: str) -> None:
    cohort = make_cohort(3, seed=0)
    traces = simulate(cohort, days=0.25, seed=0, sensor=sensor)
    step = get_sensor(sensor).interval_min
    t = 360 // step
    for name in ("bg", "ig", "cgm", "carbs", "insulin"):
        assert getattr(traces, name).shape == (3, t)
    np.testing.assert_array_equal(traces.minutes, np.arange(t) * step)
    assert traces.timestamps()[1] - traces.timestamps()[0] == np.timedelta64(step * 60, "s")
    assert traces.subjects == ("child#001", "adolescent#001", "adult#001")


def test_profiles_match_their_specs() -> None:
    g7, g6, libre, grt = (SENSOR_PROFILES[k] for k in ("dexcom-g7", "dexcom-g6", "libre-3", "guardianrt"))
    assert (g7.interval_min, g7.session_days, g7.warmup_min) == (5, 10.0, 30.0)
    assert (g6.interval_min, g6.session_days, g6.warmup_min) == (5, 10.0, 120.0)
    assert (libre.interval_min, libre.session_days, libre.warmup_min) == (1, 14.0, 60.0)
    assert (grt.interval_min, grt.clip_low, grt.clip_high) == (5, 39.0, 600.0)
    assert SENSOR_PROFILES["simglucose-dexcom"].interval_min == 3


def test_warmup_and_gap_between_sessions() -> None:
    profile = replace(get_sensor("dexcom-g6").ideal(), session_days=1.0, warmup_min=120.0, gap_min=(60.0, 60.0))
    readings = 4 * 288
    rngs = subject_streams(9, 3)
    stream = build_stream(profile, readings, rngs[1], rngs[2])
    for i in range(3):
        runs = _runs(stream.available[:, i])
        gaps = [length for on, length in runs[1:-1] if not on]
        ons = [length for on, length in runs[1:-1] if on]
        assert gaps and all(g == (60 + 120) // 5 for g in gaps)  # gap until the next sensor, then warm-up
        assert all(o == (1440 - 120) // 5 for o in ons)  # a full session minus its warm-up


def test_dropouts_remove_readings_and_none_without_them() -> None:
    base = get_sensor("dexcom-g7").ideal()
    rngs = subject_streams(4, 20)
    clean = build_stream(base, 2016, rngs[1], rngs[2])
    assert clean.available.all()
    lossy = build_stream(replace(base, dropouts_per_day=6.0, dropout_mean_min=30.0), 2016, rngs[1], rngs[2])
    lost = 1.0 - lossy.available.mean()
    assert 0.04 < lost < 0.25  # about 6 x 30 min / 1440 min = 12.5 %
    assert any(length > 1 for i in range(20) for on, length in _runs(lossy.available[:, i]) if not on)


def test_device_profile_has_warmup_gaps_and_dropouts_in_traces() -> None:
    traces = simulate(make_cohort(6, seed=2), days=12, seed=2, sensor="dexcom-g7")
    missing = np.isnan(traces.cgm)
    assert missing.any(axis=1).all()  # every subject changes sensor within 12 days
    assert missing.mean() < 0.15
    assert np.isfinite(traces.bg).all()


def test_cgm_is_clipped_to_the_sensor_range() -> None:
    profile = replace(get_sensor("simglucose-guardianrt").ideal(), clip_low=90.0, clip_high=130.0)
    traces = simulate(make_cohort(6, seed=0), days=1, seed=3, sensor=profile)
    assert np.nanmin(traces.cgm) == 90.0 and np.nanmax(traces.cgm) == 130.0
    np.testing.assert_array_equal(traces.cgm, np.clip(traces.ig, 90.0, 130.0))
    noisy = simulate(make_cohort(6, seed=0), days=1, seed=3, sensor="dexcom-g7")
    assert np.nanmin(noisy.cgm) >= 40.0 and np.nanmax(noisy.cgm) <= 400.0


def test_noise_free_and_noisy_readings() -> None:
    cohort = make_cohort(9, seed=0)
    quiet = simulate(cohort, days=2, seed=8, sensor="simglucose-dexcom", noise=False)
    inside = (quiet.ig > 39) & (quiet.ig < 600)
    np.testing.assert_array_equal(quiet.cgm[inside], quiet.ig[inside])
    noisy = simulate(cohort, days=2, seed=8, sensor="simglucose-dexcom")
    err = (noisy.cgm - noisy.ig)[(noisy.ig > 60) & (noisy.ig < 400)]
    assert 3.0 < err.std() < 30.0
    steps = np.diff(noisy.cgm - noisy.ig, axis=1)
    assert np.nanstd(steps) < 0.5 * err.std()  # autocorrelated: 15-min AR process, spline-interpolated


def test_calibration_drift_grows_per_day_of_sensor_age() -> None:
    profile = replace(get_sensor("simglucose-guardianrt").ideal(), clip_high=10_000.0, clip_low=0.0,
                      drift_mg_dl_per_day=12.0, drift_from_day=1.0)
    traces = simulate(make_cohort(2, seed=0), days=3, seed=0, sensor=profile)
    offset = traces.cgm - traces.ig
    days = traces.minutes / 1440.0
    expected = 12.0 * np.maximum(days - 1.0, 0.0)
    np.testing.assert_allclose(offset, np.broadcast_to(expected, offset.shape), atol=0.02)


def test_meals_are_announced_and_counted() -> None:
    plan = fixed_meals([(60, 30), (600, 50)], 2)
    traces = simulate(make_cohort(2, seed=0), days=1, seed=0, meals=plan, sensor="simglucose-guardianrt")
    np.testing.assert_array_equal(traces.carbs.sum(axis=1), [80.0, 80.0])
    assert traces.carbs[0, 60 // 5] == 30.0 and traces.carbs[0, 600 // 5] == 50.0
    basal_units = traces.insulin[:, 0]
    assert (traces.insulin[:, 60 // 5 + 1] > basal_units).all()  # meal bolus in the next interval


def test_random_meals_follow_simglucose_distributions() -> None:
    rngs = subject_streams(3, 400)[0]
    plan = random_meals(rngs, 1440)
    tod = plan.minute % 1440
    assert tod.min() >= TIME_LOW_MIN.min() and tod.max() <= TIME_HIGH_MIN.max()
    assert (plan.grams > 0).all()
    per_subject = np.bincount(plan.patient, minlength=400)
    assert per_subject.mean() == pytest.approx(MEAL_PROBABILITY.sum(), abs=0.2)
    lunch = plan.grams[(tod >= 600) & (tod < 840) & (plan.grams > 35)]
    assert lunch.mean() == pytest.approx(70.0, abs=2.0)


def test_resampled_cohort_is_reproducible_and_balanced() -> None:
    a = make_cohort(42, seed=5)
    b = make_cohort(42, seed=5)
    assert a.names == b.names
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    np.testing.assert_array_equal(a.x0, b.x0)
    assert a.names[:3] == ("child#001", "adolescent#001", "adult#001")
    assert [a.groups.count(g) for g in GROUPS] == [14, 14, 14]
    assert a.names[30:33] == ("child-s5-0000", "adolescent-s5-0000", "adult-s5-0000")
    prefix = make_cohort(33, seed=5)
    np.testing.assert_array_equal(prefix.x0, a.x0[:33])
    other = make_cohort(42, seed=6)
    assert not np.array_equal(other.params["BW"][30:], a.params["BW"][30:])


def test_resampled_subjects_rest_at_their_basal_glucose() -> None:
    cohort = resample_group("adult", 12, seed=2)
    model = PatientModel(cohort.params)
    basal = cohort.params["u2ss"] * cohort.params["BW"] / 6000.0
    dx = model.derivatives(initial_state(cohort.x0), np.zeros(12), basal * model.insulin_scale,
                           model.gut_terms(np.zeros(12)))
    assert np.abs(dx).max() < 1e-8
    pub = load_subjects([f"adult#{i:03d}" for i in range(1, 11)])
    assert pub.params["BW"].min() * 0.5 < cohort.params["BW"].min()
    assert cohort.params["BW"].max() < pub.params["BW"].max() * 2.0
    traces = simulate(cohort, days=1, seed=1, noise=False)
    assert np.isfinite(traces.bg).all() and traces.bg.max() < 600


def test_parquet_roundtrip_with_metadata(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out = generate_cohort(patients=4, days=0.5, seed=21, out=tmp_path / "run", progress=False, batch_size=3)
    back = read_cohort(out)
    mem = simulate(make_cohort(4, seed=21), days=0.5, seed=21)
    assert back.subjects == mem.subjects and back.interval_min == 5
    for name in ("bg", "ig", "cgm", "carbs", "insulin"):
        np.testing.assert_array_equal(getattr(back, name), getattr(mem, name))
    np.testing.assert_array_equal(back.minutes, mem.minutes)
    cols, meta = read_patient(out / "patients" / "patient-00002.parquet")
    assert meta["seed"] == 21 and meta["model_version"] == MODEL_VERSION
    assert meta["subject"] == {"index": 2, "name": "adult#001", "group": "adult", "origin": "simglucose"}
    assert meta["sensor"]["name"] == "dexcom-g7" and meta["scenario"]["kind"] == "random"
    assert cols["timestamp"][0] == np.datetime64("2025-01-01T00:00")
    schema = pq.read_schema(out / "patients" / "patient-00000.parquet")
    assert [f.name for f in schema] == ["timestamp", "bg", "ig", "cgm", "carbs", "insulin"]
    sidecar = json.loads((out / "cohort.json").read_text())
    assert sidecar["seed"] == 21 and sidecar["patients"] == 4 and len(sidecar["subjects"]) == 4
    assert sidecar["subjects"][1]["name"] == "adolescent#001" and "u2ss" in sidecar["subjects"][1]
    single = generate_cohort(patients=4, days=0.5, seed=21, out=tmp_path / "one", progress=False, batch_size=4)
    np.testing.assert_array_equal(read_cohort(single).cgm, back.cgm)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"days": 0}, "days"),
        ({"days": -1.0}, "days"),
        ({"days": math.nan}, "days"),
        ({"seed": -3}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"sensor": "dexcom-g99"}, "sensor"),
        ({"days": 1e-4}, "days"),
        ({"substeps": 0}, "substeps"),
        ({"target": -5.0}, "target"),
        ({"pump": "Nope"}, "pump"),
    ],
)
def test_simulate_rejects_bad_arguments(kwargs: dict[str, object], name: str) -> None:
    args: dict[str, object] = {"days": 1.0, "seed": 0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        simulate(load_subjects(["adult#001"]), **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"patients": 0}, "patients"),
        ({"patients": 2.5}, "patients"),
        ({"days": -2}, "days"),
        ({"seed": -1}, "seed"),
        ({"sensor": "nope"}, "sensor"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_generate_cohort_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, object], name: str) -> None:
    args: dict[str, object] = {"patients": 2, "days": 0.1, "seed": 0, "out": tmp_path / "x", "progress": False}
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        generate_cohort(**args)  # type: ignore[arg-type]


def test_generate_cohort_refuses_a_file_as_out(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(ValueError, match="out"):
        generate_cohort(patients=1, days=0.1, seed=0, out=target, progress=False)


def test_resample_and_make_cohort_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="group"):
        resample_group("toddler", 3, seed=0)
    with pytest.raises(ValueError, match="count"):
        resample_group("adult", 0, seed=0)
    with pytest.raises(ValueError, match="patients"):
        make_cohort(0, seed=0)
    with pytest.raises(ValueError, match="names"):
        load_subjects(["adult#999"])
