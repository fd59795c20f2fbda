"""End to end: a reduced demo with real processes (Mosquitto, uvicorn cloud, gateways, hospital, fleet)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from sim.demo import DemoConfig, run_demo


@pytest.mark.parametrize("broker", ["mosquitto", pytest.param("amqtt", marks=pytest.mark.slow)])
def test_reduced_demo_federates_without_losing_a_reading(tmp_path: Path, broker: str) -> None:
    out = tmp_path / "run"
    cfg = DemoConfig(out=out, gateways=2, devices_per_gateway=3, hospitals=1, hospital_patients=6, days=1.0,
                     rounds=3, heldout_patients=6, broker=broker)  # UVA/Padova patients, as the demo
    summary = run_demo(cfg)

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["scenario"] == "demo" and summary["broker"] == broker
    everyone = ["gw-1", "gw-2", "hosp-1"]
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for r in rounds:
        assert r["model_version"] is not None, r
        # promoted, or held at "evaluated" by a gate that is named
        assert r["state"] == "promoted" or (r["state"] == "evaluated" and "gate" in r["gates_failed"]), r
        assert sorted(r["participants"]) == everyone
        assert r["bytes_up"] > 0 and r["seconds"] > 0
        for p in everyone:
            eps = r["epsilon"][p]
            assert eps["value"] > 0 and eps["delta"] == 1e-5
            assert eps["unit"] == "window" and eps["accountant"] == "prv"
        assert r["rmse30"] > 0 and r["persistence_rmse30"] > 0
    # cumulative epsilon only grows
    for p in everyone:
        values = [r["epsilon"][p]["value"] for r in rounds]
        assert values == sorted(values) and values[-1] > values[0]
    # the federation learns: every round's model beats the untrained one, and the last beats persistence
    # (round-over-round gains are not monotonic under DP noise; docs/results.md shows the figures)
    assert all(r["rmse30"] < summary["initial_model"]["rmse30"] for r in rounds), summary["initial_model"]
    assert rounds[-1]["rmse30"] < rounds[-1]["persistence_rmse30"]

    readings = summary["readings"]
    assert 0.9 * 2 * 3 * 288 < readings["published"] <= 2 * 3 * 288  # sensor warm-ups and dropouts leave gaps
    assert readings["ingested"] == readings["published"] and readings["lost"] == 0 and readings["rejected"] == 0
    assert (out / "report.html").stat().st_size > 10_000

    # the last gateway's devices are Pi Zero 2 W hubs: the model reached all, a tampered copy was refused by all,
    # a rollback reached all; they ran forecasts on their raw readings and reported counts only
    checks = summary["release_checks"]
    assert checks["gateways"] == ["gw-2"] and checks["devices"] == 3
    assert checks["promoted"]["reached_all"] and checks["tampered"]["refused_by_all"], checks
    assert checks["rollback"]["reached_all"] and checks["rollback"]["to"] < checks["rollback"]["from"], checks
    hubs = json.loads((out / "fleet-gw-2.json").read_text())
    assert hubs["models_loaded"] == 3 and hubs["forecasts"] > 0
    assert all(d["model_refusals"].get("tampered") == 1 for d in hubs["per_device"].values())
    assert json.loads((out / "fleet-gw-1.json").read_text())["models_loaded"] == 0  # dexcom-g7 runs no model
    # candidates were judged on the data scientist's, the hospital's (federated) and the cloud's own metrics
    for r in rounds:
        assert {"posted", "federated", "validation"} <= set(r["metrics_by_source"]), r["metrics_by_source"]
    assert summary["drift"]["alerts"] == []

    with sqlite3.connect(out / "cloud.db") as db:
        versions = [v for (v,) in db.execute("SELECT version FROM models ORDER BY version")]
        kinds = {k for (k,) in db.execute("SELECT kind FROM events")}
    assert versions == [0, 1, 2, 3]
    assert {"update.accepted", "model.rolled_back", "release.tflite_signed"} <= kinds, kinds


def test_demo_refuses_to_overwrite_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not written by wearfed"):
        run_demo(DemoConfig(out=tmp_path))
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_replay_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    """Same seed, two runs: the same readings, windows, epsilons and scores (CKKS noise is far below 1e-3)."""
    def figures(run: str) -> list:
        cfg = DemoConfig(out=tmp_path / run, gateways=2, devices_per_gateway=2, hospitals=1, hospital_patients=3,
                         days=0.5, rounds=2, heldout_patients=3)
        s = run_demo(cfg)
        return [s["readings"]["published"], s["readings"]["ingested"]] + [
            (r["windows"], {p: e["value"] for p, e in r["epsilon"].items()}, round(r["rmse30"], 3),
             round(r["mard30"], 3)) for r in s["rounds"]]

    assert figures("a") == figures("b")
