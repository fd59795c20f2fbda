"""`wearfed export fhir` as a subprocess: the Bundle validates against fhir.resources' FHIR models (R4B: the
fhir.resources 8 release ships R5 as default and R4B, no separate R4 module; CGM IG 1.0.0 is on R4, whose
Observation, Patient and Bundle R4B keeps unchanged in the elements used here), follows the HL7 CGM IG for readings
(LOINC 99504-3, UCUM mg/dL), and bad input fails with exit 2 and a message naming file, line and field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation

from device.sensor import synthetic_trace
from gateway.hospital import write_clinical_csv

T0 = 1_767_225_600


def export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "federation.cli", "export", "fhir", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    series = {}
    for p in ("p0", "p1"):
        t, _bg, cgm = synthetic_trace(seed=3, patient=p, start=T0, days=0.1)
        series[p] = (t, cgm)
    readings = tmp_path / "clinical.csv"
    write_clinical_csv(readings, series)
    forecasts = tmp_path / "forecasts.csv"
    forecasts.write_text(f"patient,time,horizon_min,glucose\np0,{T0 + 3600},30,92.5\np0,{T0 + 3600},60,68.0\n"
                         f"p1,{T0 + 3600},30,150\n")
    alerts = tmp_path / "alerts.csv"
    alerts.write_text(f"patient,time,kind,horizon_min,confidence\np0,{T0 + 3600},hypo,60,0.83\n")
    return {"readings": readings, "forecasts": forecasts, "alerts": alerts, "n_p0": len(series["p0"][0])}


@pytest.mark.parametrize("bundle_type", ["collection", "transaction"])
def test_bundle_validates_and_follows_the_cgm_ig(tmp_path: Path, files: dict, bundle_type: str) -> None:
    out = tmp_path / "p0.json"
    res = export("--readings", str(files["readings"]), "--patient", "p0", "--forecasts", str(files["forecasts"]),
                 "--alerts", str(files["alerts"]), "--bundle-type", bundle_type, "--out", str(out))
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    bundle = Bundle.model_validate(doc)  # raises on anything FHIR's R4B models refuse
    assert bundle.type == bundle_type
    resources = [e.resource for e in bundle.entry]
    assert resources[0].__resource_type__ == "Patient"
    obs = [Observation.model_validate(e["resource"]) for e in doc["entry"][1:]]
    readings = [o for o in obs if o.status == "final"]
    assert len(readings) == files["n_p0"] and len(obs) == files["n_p0"] + 3  # + 2 forecasts (p0 only) + 1 alert
    for o in readings:
        assert o.code.coding[0].system == "http://loinc.org" and o.code.coding[0].code == "99504-3"
        assert o.valueQuantity.code == "mg/dL" and o.valueQuantity.system == "http://unitsofmeasure.org"
        assert o.category[0].coding[0].code == "laboratory"
        assert o.subject.reference == doc["entry"][0]["fullUrl"]
    prelim = [o for o in obs if o.status == "preliminary"]
    assert all(o.code.coding[0].code != "99504-3" for o in prelim)  # a forecast is never filed as a reading
    (hypo,) = [o for o in prelim if o.interpretation]
    assert hypo.interpretation[0].coding[0].code == "L" and float(hypo.valueQuantity.value) == 0.83
    if bundle_type == "transaction":
        assert all(e["request"]["method"] == "POST" for e in doc["entry"])
    again = tmp_path / "again.json"
    assert export("--readings", str(files["readings"]), "--patient", "p0", "--out", str(again)).returncode == 0
    ids = {e["resource"]["id"] for e in json.loads(again.read_text())["entry"][1:]}
    assert ids <= {e["resource"]["id"] for e in doc["entry"]}  # stable ids: a re-export updates, not duplicates


@pytest.mark.parametrize("case,needle", [
    ("unknown patient", "no rows for patient 'p9'"),
    ("bad forecast glucose", "forecasts.csv:2: glucose 'high' is not a number"),
    ("bad horizon", "forecasts.csv:2: horizon_min 45 is not one of"),
    ("bad alert kind", "alerts.csv:2: kind 'low' must be hypo or hyper"),
    ("confidence out of range", "alerts.csv:2: confidence 1.5 out of range"),
    ("bad header", "forecasts.csv:1: header must be"),
    ("missing file", "nope.csv: no such file"),
    ("bad reading", "clinical.csv:3: glucose"),
])
def test_bad_input_exits_2_naming_file_line_field(tmp_path: Path, files: dict, case: str, needle: str) -> None:
    patient, readings = "p0", str(files["readings"])
    if case == "unknown patient":
        patient = "p9"
    elif case == "bad forecast glucose":
        files["forecasts"].write_text(f"patient,time,horizon_min,glucose\np0,{T0},30,high\n")
    elif case == "bad horizon":
        files["forecasts"].write_text(f"patient,time,horizon_min,glucose\np0,{T0},45,100\n")
    elif case == "bad alert kind":
        files["alerts"].write_text(f"patient,time,kind,horizon_min,confidence\np0,{T0},low,30,0.9\n")
    elif case == "confidence out of range":
        files["alerts"].write_text(f"patient,time,kind,horizon_min,confidence\np0,{T0},hypo,30,1.5\n")
    elif case == "bad header":
        files["forecasts"].write_text("who,when,what\n")
    elif case == "missing file":
        readings = str(tmp_path / "nope.csv")
    else:
        lines = files["readings"].read_text().splitlines()
        lines[2] = f"p0,{T0},2000"
        files["readings"].write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.json"
    res = export("--readings", readings, "--patient", patient, "--forecasts", str(files["forecasts"]), "--alerts",
                 str(files["alerts"]), "--out", str(out))
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr + res.stdout and "Traceback" not in res.stderr
    assert not out.exists()
