"""A reduced privacy-utility sweep: the table has every setting and the required columns."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from sim.baselines import linear_extrapolation
from sim.study import StudyConfig
from sim.sweep import run_sweep

REQUIRED = ["ldp_epsilon", "dp_epsilon", "rmse30", "mae30", "mard30", "clarke_ab30", "hypo_sens30", "hypo_spec30"]


def test_reduced_sweep_writes_the_table(tmp_path: Path) -> None:
    base = StudyConfig(source="uva-padova", gateways=2, patients_per_gateway=2, hospitals=1, hospital_patients=2,
                       days=0.5, heldout_patients=3, heldout_days=0.5, rounds=1, local_epochs=1)
    rows = run_sweep(base, tmp_path, ldp_grid=(None, 2.0), dp_grid=(None, 0.5))
    with open(tmp_path / "sweep.csv") as fh:
        table = list(csv.DictReader(fh))
    assert set(REQUIRED) <= set(table[0])
    assert [(r["ldp_epsilon"], r["dp_epsilon"]) for r in table] == [("none", "none"), ("none", "0.5"),
                                                                     ("2", "none"), ("2", "0.5")]
    for r in table:
        assert 0 < float(r["rmse30"]) < 200 and 0 <= float(r["clarke_ab30"]) <= 1
    # settings really differ (at this toy size their order is noise; the full sweep measures the trend)
    assert len({round(r["rmse30"], 6) for r in rows}) == 4
    md = (tmp_path / "sweep.md").read_text()
    assert "centralised non-private" in md and "persistence" in md


def test_linear_extrapolation_follows_a_line() -> None:
    hist = np.tile(np.arange(24, dtype=float) * 2 + 100, (3, 1))  # +2 mg/dL per 5 min
    np.testing.assert_allclose(linear_extrapolation(hist), [[146 + 12, 146 + 24]] * 3)


def test_a_diverged_model_scores_nan_instead_of_crashing() -> None:
    from sim.scoring import score

    got = score(np.array([np.nan, 100.0]), np.array([100.0, 100.0]))
    assert np.isnan(got["rmse"]) and np.isnan(got["clarke_ab"])
