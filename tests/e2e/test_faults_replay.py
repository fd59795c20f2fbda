"""The shipped `faults` scenario with real processes: every fault fires, no reading is lost, rounds end cleanly."""

from __future__ import annotations

import json
from pathlib import Path

from sim.replay import run_replay
from sim.scenario import FAULT_KINDS, load_scenario


def test_faults_scenario(tmp_path: Path) -> None:
    scenario = load_scenario("faults")
    assert {f.kind for f in scenario.faults} == set(FAULT_KINDS)
    summary = run_replay(scenario, tmp_path / "run", broker="mosquitto")

    fired = {(f["kind"], f["detail"].split(":")[0]) for f in summary["faults"]}
    assert {(k, "start") for k in FAULT_KINDS} <= fired
    for r in summary["rounds"]:  # completed (a model came out) or cleanly failed with a reason
        assert r["model_version"] is not None or r["failure_reason"], r
    assert summary["readings"]["lost"] == 0, summary["readings"]
    assert summary["readings"]["ingested"] > 0
    # the drifting sensors of gw-1 are flagged, gw-2 is scored and is not
    drift = summary["drift"]
    assert {a["participant"] for a in drift["alerts"]} == {"gw-1"}, drift
    gw2 = drift["status"]["participants"]["gw-2"]
    assert gw2["kl_nats"] is not None and gw2["kl_nats"] < drift["status"]["threshold_nats"] and not gw2["alert"]
    report = (tmp_path / "run" / "report.html").read_text()
    assert "broker_outage" in report and "Drift of device telemetry" in report
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["scenario"] == "faults"
