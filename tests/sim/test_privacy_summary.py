"""summary.json's privacy block: what the devices' odometers charged per patient-day (real odometer files, a corrupt
one skipped, not trusted) and each node's DP-SGD epsilon per patient after its last round."""

from __future__ import annotations

from pathlib import Path

import pytest

from device.odometer import PrivacyOdometer
from sim.privacy_summary import dp_sgd, odometers
from sim.scenario import load_scenario


def test_odometers_report_the_spend_per_patient_day(tmp_path: Path) -> None:
    for dev, spends in (("d1", {"2026-01-01": 8.0, "2026-01-02": 2.5}), ("d2", {"2026-01-01": 6.0})):
        o = PrivacyOdometer(tmp_path / "fleet-gw-1" / "odometer" / f"{dev}.json", daily_cap=8.0, mechanism="hybrid",
                            epsilon_per_reading=0.02, unit="patient-day")
        for day, eps in spends.items():
            o.charge(day, epsilon=eps, releases=10)
    (tmp_path / "fleet-gw-1" / "odometer" / "torn.json").write_text("{not json")
    rep = odometers(tmp_path)
    assert rep["devices"] == 2 and rep["unit"] == ["patient-day"] and rep["daily_cap"] == [8.0]
    assert rep["patient_days"] == 3 and rep["max_epsilon_per_day"] == 8.0
    assert rep["mean_epsilon_per_day"] == pytest.approx((8.0 + 2.5 + 6.0) / 3)
    assert odometers(tmp_path / "empty") == {"devices": 0}


def test_dp_sgd_reports_each_nodes_last_cumulative_epsilon_with_its_unit() -> None:
    e = {"delta": 1e-5, "unit": "patient", "accountant": "prv"}
    rounds = [{"epsilon": {"gw-1": {"value": 1.0, **e}, "hosp-1": {"value": 0.5, **e}}},
              {"epsilon": {"gw-1": {"value": 1.7, **e}}}, {"epsilon": {}}]
    out = dp_sgd(rounds, load_scenario("demo"))
    assert out["participants"]["gw-1"]["epsilon"] == 1.7 and out["participants"]["hosp-1"]["epsilon"] == 0.5
    assert out["participants"]["gw-1"]["unit"] == "per patient" and out["cap"] == 10.0
