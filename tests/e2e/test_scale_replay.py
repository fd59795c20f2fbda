"""The scale study end to end, shrunk: two participant counts, hospital pools as real processes, the ratio."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim.scale import run_scale
from sim.scenario import SHIPPED, parse_scenario


@pytest.mark.slow  # two full replays with pool processes (make test runs the reduced demo end to end)
def test_scale_study_reports_round_time_per_participant_count(tmp_path: Path) -> None:
    text = (SHIPPED / "scale.toml").read_text()
    text = (text.replace("participants = [5, 50]", "participants = [3, 4]").replace("patients = 50", "patients = 8")
            .replace("days = 2.0", "days = 0.5").replace("count = 3", "count = 2")
            .replace("heldout_patients = 5", "heldout_patients = 2").replace("regions = 5 ", "regions = 0 "))
    summary = run_scale(parse_scenario(text), tmp_path / "run")

    scale = summary["scale"]
    assert scale["participants"] == [3, 4] and scale["patients"] == 8
    assert scale["ratio"] == round(scale["round_seconds_4"] / scale["round_seconds_3"], 3)
    assert "ratio_regions" not in scale  # regions = 0: the direct path only
    assert all(scale[f"cloud_cpu_seconds_{n}"] > 0 and scale[f"participants_cpu_seconds_{n}"] > 0 for n in (3, 4))
    for n in (3, 4):
        rounds = summary["runs"][str(n)]["rounds"]
        assert len(rounds) == 2 and all(r["model_version"] is not None for r in rounds), rounds
        assert all(len(r["participants"]) == n for r in rounds)  # every participant answered every round
        assert all(r["round_seconds"] > 0 for r in rounds)
        run = tmp_path / "run" / f"n{n}"
        assert (run / "logs" / "hospital-pool-0.log").exists() and not (run / "logs" / "h-001.log").exists()
        keys = {json.loads((run / f"h-{k:03d}" / "enrolled.json").read_text())["public_key"] for k in range(1, n + 1)}
        assert len(keys) == n
    assert summary["clarke_points"]["reference"] and summary["readings"]["published"] == 0
    assert "Scale: round time by participant count" in (tmp_path / "run" / "report.html").read_text()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["scale"] == scale


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_scale_study_through_region_relays(tmp_path: Path) -> None:
    """The same shrunken study with `regions = 2`: each count is replayed again, the hospitals (real pool processes)
    sending their updates through two real `wearfed region serve` processes."""
    text = (SHIPPED / "scale.toml").read_text()
    text = (text.replace("participants = [5, 50]", "participants = [3, 4]").replace("patients = 50", "patients = 8")
            .replace("days = 2.0", "days = 0.5").replace("count = 3", "count = 2")
            .replace("heldout_patients = 5", "heldout_patients = 2").replace("regions = 5 ", "regions = 2 "))
    summary = run_scale(parse_scenario(text), tmp_path / "run")
    scale = summary["scale"]
    assert scale["regions"] == 2
    assert scale["ratio_regions"] == round(scale["round_seconds_4_regions"] / scale["round_seconds_3_regions"], 3)
    for n in (3, 4):
        rounds = summary["runs"][f"{n}-regions2"]["rounds"]
        assert len(rounds) == 2 and all(r["model_version"] is not None for r in rounds), rounds
        assert all(len(r["participants"]) == n for r in rounds)
        run = tmp_path / "run" / f"n{n}-regions2"
        assert (run / "logs" / "region-1.log").exists() and (run / "logs" / "region-2.log").exists()
        assert scale[f"region_relays_cpu_seconds_{n}_regions"] > 0  # the relays' own CPU, beside the cloud's
        spec = json.loads((run / "hospital-pool-0.json").read_text())
        assert {node["region"] for node in spec["nodes"]} <= {"region-1", "region-2"}
