"""`sim.summary.RunSummary`, the contract of summary.json: the recorded summaries of real runs validate and read
back unchanged; a summary missing a required key, or with an unknown one, is refused naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sim.cli import _exit_code
from sim.html_report import write_report
from sim.summary import RunSummary, SummaryError, load_summary, parse_summary, write_summary

DATA = Path(__file__).resolve().parents[1] / "data"
RECORDED = [DATA / "demo_summary.json", DATA / "report_summary.json"]  # a real demo's each (an older one, a newer)


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.name)
def test_recorded_summaries_validate_and_read_back_unchanged(path: Path) -> None:
    run = load_summary(path)
    assert isinstance(run, RunSummary) and len(run.rounds) == 3 and run.rounds[0].round == 1
    assert run.readings.lost == 0 and run.heldout.patients == 10
    assert run.rounds[0].epsilon["gw-1"].unit in ("patient", "window")
    assert run.rounds[0].rmse30 > 0  # a held-out score: an open-ended extra key of the round
    original = json.loads(path.read_text())
    assert json.dumps(run.document(), sort_keys=True) == json.dumps(original, sort_keys=True)


def test_the_newer_summary_types_its_blocks() -> None:
    run = load_summary(DATA / "report_summary.json")
    assert run.forecaster is not None and run.forecaster.parameters > 0
    assert run.clarke_points is not None and len(run.clarke_points.reference) == len(run.clarke_points.prediction)
    assert run.device_privacy is not None and set(run.device_privacy.gateways) == {"gw-1", "gw-2"}
    assert run.fleet_timeline and run.fleet_timeline[-1].connected >= 0


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda s: s.pop("readings"), "readings: Field required"),
    (lambda s: s["readings"].pop("lost"), "readings.lost: Field required"),
    (lambda s: s["rounds"][1].pop("epsilon"), "rounds.1.epsilon: Field required"),
    (lambda s: s["rounds"][0]["epsilon"]["gw-1"].pop("unit"), "rounds.0.epsilon.gw-1.unit: Field required"),
    (lambda s: s.update(readngs={}), "readngs: Extra inputs are not permitted"),
])
def test_a_malformed_summary_is_refused_naming_the_field(tmp_path: Path, mutate, field: str) -> None:  # noqa: ANN001
    doc = json.loads((DATA / "report_summary.json").read_text())
    mutate(doc)
    with pytest.raises(SummaryError, match="not a run summary") as err:
        parse_summary(doc)
    assert field in str(err.value)
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(SummaryError, match=str(path)):
        load_summary(path)
    with pytest.raises(SummaryError):
        write_summary(doc, tmp_path / "out")  # refused before anything is written
    assert not (tmp_path / "out").exists()


def test_write_summary_writes_the_document_and_the_report_reads_it(tmp_path: Path) -> None:
    doc = json.loads((DATA / "report_summary.json").read_text())
    doc["rounds"][0]["rmse30"] = np.float32(19.5)  # the replay's scores are numpy scalars
    doc["faults"] = [{"t": 1.5, "kind": "broker_outage", "target": None, "detail": "start: 60 s"}]  # no one target
    run = write_summary(doc, tmp_path)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["rounds"][0]["rmse30"] == 19.5 and load_summary(tmp_path / "summary.json") == run
    assert written["faults"] == doc["faults"]
    assert "wearfed report: demo" in write_report(run, tmp_path).read_text()
    assert _exit_code(written) == 0  # every round gave a model, nothing lost (the CLI reads through the model too)
    written["readings"]["lost"] = 1
    assert _exit_code(written) == 1
