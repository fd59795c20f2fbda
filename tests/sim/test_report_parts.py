"""The report's parts that read a run: device odometers, the cloud's gate refusals in plain words, column names,
the simulated-hours axis of the fleet timeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloud import gates
from device.odometer import PrivacyOdometer
from sim.html_report import _section_fleet, _sim_hours
from sim.outcomes import FAIRNESS_GATES, GATE_WORDS, SOURCE_WORDS, held_back_reason, outcome, parse_gate_failures
from sim.report_labels import OTHER, column_label
from sim.run_facts import device_privacy

REAL = Path(__file__).resolve().parents[1] / "data" / "report_summary.json"


def _odometer(root: Path, device: str, *, unit: str, eps: float, cap: float) -> PrivacyOdometer:
    return PrivacyOdometer(root / "odometer" / f"{device}-0badc0de.json", daily_cap=cap, mechanism="hybrid",
                           epsilon_per_reading=eps, unit=unit)


def test_device_privacy_is_the_largest_one_day_spend_read_from_real_odometers(tmp_path: Path) -> None:
    a = _odometer(tmp_path / "fleet-gw-1", "gw-1-dev001", unit="reading", eps=8.0, cap=2784.0)
    a.spend("2026-01-01", 288)
    a.spend("2026-01-02", 10)
    b = _odometer(tmp_path / "fleet-gw-1" / "shard-1", "gw-1-dev002", unit="reading", eps=8.0, cap=2784.0)
    b.spend("2026-01-01", 300)
    c = _odometer(tmp_path / "device-gw-2-dev001", "gw-2-dev001", unit="patient-day", eps=2.0, cap=8.0)
    c.charge("2026-01-01", epsilon=6.0, releases=3)
    (tmp_path / "fleet-gw-1" / "odometer" / "gw-1-dev003-0badc0de.json").write_text("{not json")
    out = device_privacy(tmp_path)
    gw1, gw2 = out["gateways"]["gw-1"], out["gateways"]["gw-2"]
    assert gw1["devices"] == 2 and gw1["max_per_patient_day"] == 300 * 8.0 and gw1["patient_days"] == 3
    assert gw1["unit"] == "reading" and gw1["epsilon_per_reading"] == 8.0 and gw1["daily_cap"] == 2784.0
    assert gw2["unit"] == "patient-day" and gw2["max_per_patient_day"] == 6.0 and gw2["daily_cap"] == 8.0
    assert out["unreadable_odometers"] == 1  # counted, not hidden


def test_every_gate_the_cloud_can_fail_has_plain_words_and_its_source() -> None:
    cfg = gates.GateConfig(require_sources=("posted", "federated"))
    bad = {"rmse30": 40.0, "clarke_ab30": 0.5, "hypo_sens30": 0.0}
    cand = gates.Candidate(version=2, metrics={"validation": bad, "posted": {"clarke_ab30": 0.5}}, promoted_version=1,
                           promoted_metrics={"validation": {"rmse30": 20.0}}, lineage_epsilon=99.0,
                           lineage_rounds=(1, 2), over_cap=("gw-1: epsilon 11 > cap 10",))
    unscored = gates.Candidate(version=3, metrics={"posted": {"clarke_ab30": 0.99}})
    failed = gates.failures(gates.check(cfg, cand)) + gates.failures(gates.check(cfg, unscored))
    # every accuracy and privacy gate the cloud has fails here, and the fairness presence check; each has words
    assert set(GATE_WORDS) - set(FAIRNESS_GATES) | {"group_figures_present"} == {f.gate for f in failed}
    text = "; ".join(f.message for f in failed)  # what the cloud answers a refused approval with
    parsed = parse_gate_failures(text)
    assert [p["gate"] for p in parsed] == [f.gate for f in failed]
    for p, f in zip(parsed, failed, strict=True):
        assert p["plain"].startswith(GATE_WORDS[f.gate]) and p["detail"] == f.detail
        if f.source:
            assert SOURCE_WORDS[f.source] in p["plain"]


def test_text_that_is_not_a_gate_passes_through() -> None:
    row = {"round": 2, "model_version": 2, "state": "evaluated",
           "gates_failed": "segregation of duties: replay-data-scientist opened round 2 and may not approve it"}
    assert held_back_reason(row) == row["gates_failed"] and outcome(row) == "held back by a gate"
    assert held_back_reason({"model_version": None, "failure_reason": "quorum not met"}) == "no model: quorum not met"
    assert held_back_reason({"model_version": 3, "state": "promoted"}) is None
    assert outcome({"model_version": 3, "state": "promoted"}) == "promoted"


@pytest.mark.parametrize(("key", "label"), [
    ("rmse30", "RMSE +30 min (mg/dL)"),
    ("bg_mard60", "MARD +60 min vs true BG (%)"),
    ("child_alert_false_per_day30", "child: false hypo alerts +30 min (per patient-day)"),
    ("persistence_rmse60", "persistence RMSE +60 min (mg/dL)"),
    ("gates_failed", "gates that held it back (cloud's words)"),
    ("something_new", "something new"),
])
def test_column_labels(key: str, label: str) -> None:
    assert column_label(key) == label


def test_every_key_of_a_real_round_gets_words() -> None:
    rows = json.loads(REAL.read_text())["rounds"]
    keys = {k for r in rows for k, v in r.items() if isinstance(v, int | float | str)} - {"model_hash"}
    plain = sorted(k for k in keys if k not in OTHER and column_label(k) == k.replace("_", " "))
    assert not plain, plain


def test_fleet_axis_is_simulated_hours_whatever_the_summary_recorded() -> None:
    s = json.loads(REAL.read_text())
    hours = [_sim_hours(s, p["t"]) for p in s["fleet_timeline"]]
    assert hours == [p["t"] for p in s["fleet_timeline"]]  # the replay records hours since the simulated start
    assert max(hours) > 24  # the demo's one streamed day, then the rounds and the release checks
    assert _sim_hours(s, s["sim_start"] + 7200) == 2.0  # a unix time is converted
    assert _sim_hours({}, float("nan")) != _sim_hours({}, float("nan"))  # NaN stays a gap
    assert f"over {max(hours) - min(hours):.1f} simulated hours" in _section_fleet(s)
