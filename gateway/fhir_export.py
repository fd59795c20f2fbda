"""`wearfed export fhir`: one patient's CGM readings, forecasts and alerts as an HL7 FHIR R4 Bundle (JSON).

Readings follow the HL7 Continuous Glucose Monitoring implementation guide (v1.0.0, STU 1, on FHIR R4;
https://hl7.org/fhir/uv/cgm/, profile CGMSensorReadingMassPerVolume and its example
Observation-cgmSensorReadingMassPerVolumeExample): an Observation with category ``laboratory``, code LOINC 99504-3
("Glucose [Mass/volume] in Interstitial fluid"), ``effectiveDateTime`` and a UCUM ``mg/dL`` valueQuantity. The
guide defines no resource for forecasts or alerts; wearfed writes them as Observations with status ``preliminary``
under its own code system (`WEARFED_CODES`), never under the LOINC code of a measurement, so an EHR cannot take a
forecast for a reading. An alert carries the v3 ObservationInterpretation code L (hypo) or H (hyper).

Inputs are CSV files: readings in the hospital's clinical format (`gateway.hospital.load_clinical_csv`),
forecasts ``patient,time,horizon_min,glucose`` and alerts ``patient,time,kind,horizon_min,confidence``; every
bad row raises `SchemaError` naming file, line and field. Output: a ``collection`` Bundle, or with
``transaction`` one an EHR's FHIR endpoint can POST as a whole. Resource ids are UUIDv5 of (patient, kind, time),
so a re-export produces the same ids.
"""

from __future__ import annotations

import csv
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from federation.errors import SchemaError
from federation.telemetry import TIME_RANGE

CGM_IG = "http://hl7.org/fhir/uv/cgm"
READING_PROFILE = f"{CGM_IG}/StructureDefinition/cgm-sensor-reading-mass-per-volume"
LOINC = "http://loinc.org"
LOINC_CGM_MG_DL = "99504-3"  # HL7 CGM IG 1.0.0: sensor reading, mass per volume (105272-9 is mmol/L)
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
WEARFED_CODES = "urn:wearfed:fhir:cgm-derived"  # wearfed's own codes (a URN: no published CodeSystem page)
NAMESPACE = uuid.UUID("5b0a4a54-8d0e-4c0e-9a55-6f0c9f3e2a11")  # wearfed's UUIDv5 namespace for resource ids
HORIZONS = (30, 60)  # minutes: the forecaster's outputs (federation/model.py)
GLUCOSE_RANGE = (10.0, 1000.0)  # mg/dL, as gateway.hospital accepts


@dataclass(frozen=True)
class Forecast:
    t: int  # when it was made
    horizon_min: int
    mgdl: float


@dataclass(frozen=True)
class Alert:
    t: int
    kind: str  # hypo | hyper
    horizon_min: int
    confidence: float


def _rows(path: Path, columns: tuple[str, ...]):  # noqa: ANN202 - yields (where, row)
    try:
        fh = open(path, newline="")  # noqa: SIM115 - closed by the with below; the open's error is mapped here
    except OSError as exc:
        raise SchemaError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    with fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != columns:
            raise SchemaError(f"{path}:1: header must be {','.join(columns)}, got {','.join(reader.fieldnames or [])}")
        for line, row in enumerate(reader, start=2):
            yield f"{path}:{line}", row


def _num(row: dict, key: str, where: str, *, lo: float, hi: float, integer: bool = False) -> float:
    raw = (row.get(key) or "").strip()
    try:
        v = int(raw) if integer else float(raw)
    except ValueError as exc:
        raise SchemaError(f"{where}: {key} {raw!r} is not {'an integer' if integer else 'a number'}") from exc
    if not (math.isfinite(v) and lo <= v <= hi):
        raise SchemaError(f"{where}: {key} {v} out of range [{lo:g}, {hi:g}]")
    return v


def load_forecasts(path: Path, patient: str) -> list[Forecast]:
    out = []
    for where, row in _rows(path, ("patient", "time", "horizon_min", "glucose")):
        t = int(_num(row, "time", where, lo=TIME_RANGE[0], hi=TIME_RANGE[1], integer=True))
        h = int(_num(row, "horizon_min", where, lo=1, hi=240, integer=True))
        if h not in HORIZONS:
            raise SchemaError(f"{where}: horizon_min {h} is not one of the forecaster's {HORIZONS}")
        g = _num(row, "glucose", where, lo=GLUCOSE_RANGE[0], hi=GLUCOSE_RANGE[1])
        if row["patient"] == patient:
            out.append(Forecast(t, h, g))
    return out


def load_alerts(path: Path, patient: str) -> list[Alert]:
    out = []
    for where, row in _rows(path, ("patient", "time", "kind", "horizon_min", "confidence")):
        t = int(_num(row, "time", where, lo=TIME_RANGE[0], hi=TIME_RANGE[1], integer=True))
        kind = (row.get("kind") or "").strip()
        if kind not in ("hypo", "hyper"):
            raise SchemaError(f"{where}: kind {kind!r} must be hypo or hyper")
        h = int(_num(row, "horizon_min", where, lo=1, hi=240, integer=True))
        c = _num(row, "confidence", where, lo=0.0, hi=1.0)
        if row["patient"] == patient:
            out.append(Alert(t, kind, h, c))
    return out


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _uuid(patient: str, *parts: object) -> str:
    return str(uuid.uuid5(NAMESPACE, "/".join(map(str, (patient, *parts)))))


def _mgdl(v: float) -> dict:
    return {"value": round(float(v), 1), "unit": "mg/dl", "system": UCUM, "code": "mg/dL"}


def _local(code: str, display: str) -> dict:
    return {"coding": [{"system": WEARFED_CODES, "code": code, "display": display}], "text": display}


def reading(patient_ref: str, pid: str, t: int, mgdl: float) -> dict:
    return {"resourceType": "Observation", "id": _uuid(pid, "reading", t), "meta": {"profile": [READING_PROFILE]},
            "status": "final",
            "category": [{"coding": [{"system": CATEGORY, "code": "laboratory"}]}],
            "code": {"coding": [{"system": LOINC, "code": LOINC_CGM_MG_DL,
                                 "display": "Glucose [Mass/volume] in Interstitial fluid"}]},
            "subject": {"reference": patient_ref}, "effectiveDateTime": _iso(t), "valueQuantity": _mgdl(mgdl)}


def forecast(patient_ref: str, pid: str, f: Forecast) -> dict:
    return {"resourceType": "Observation", "id": _uuid(pid, "forecast", f.t, f.horizon_min), "status": "preliminary",
            "code": _local(f"glucose-forecast-{f.horizon_min}min",
                           f"Forecast interstitial glucose, +{f.horizon_min} min (wearfed forecaster)"),
            "subject": {"reference": patient_ref}, "effectiveDateTime": _iso(f.t + 60 * f.horizon_min),
            "issued": _iso(f.t).replace("Z", "+00:00"), "valueQuantity": _mgdl(f.mgdl)}


def alert(patient_ref: str, pid: str, a: Alert) -> dict:
    low = a.kind == "hypo"
    return {"resourceType": "Observation", "id": _uuid(pid, "alert", a.t, a.kind), "status": "preliminary",
            "code": _local(f"{a.kind}-alert", f"Forecast {'hypoglycaemia (<70' if low else 'hyperglycaemia (>250'} "
                                              f"mg/dL) alert, +{a.horizon_min} min"),
            "subject": {"reference": patient_ref}, "effectiveDateTime": _iso(a.t),
            "interpretation": [{"coding": [{"system": INTERPRETATION, "code": "L" if low else "H"}]}],
            "valueQuantity": {"value": round(a.confidence, 4), "unit": "probability", "system": UCUM, "code": "1"}}


def build_bundle(patient: str, readings: list[tuple[int, float]], forecasts: list[Forecast], alerts: list[Alert], *,
                 bundle_type: str = "collection", now: int | None = None) -> dict:
    """The Bundle: the Patient first, then readings, forecasts and alerts in time order."""
    if bundle_type not in ("collection", "transaction"):
        raise SchemaError(f"bundle type must be collection or transaction, got {bundle_type!r}")
    pat_uuid = _uuid(patient, "patient")
    ref = f"urn:uuid:{pat_uuid}"
    resources = [{"resourceType": "Patient", "id": pat_uuid,
                  "identifier": [{"system": "urn:wearfed:patient", "value": patient}]}]
    resources += [reading(ref, patient, t, g) for t, g in sorted(readings)]
    resources += [forecast(ref, patient, f) for f in sorted(forecasts, key=lambda f: (f.t, f.horizon_min))]
    resources += [alert(ref, patient, a) for a in sorted(alerts, key=lambda a: (a.t, a.kind))]
    entries = []
    for r in resources:
        e: dict = {"fullUrl": f"urn:uuid:{r['id']}", "resource": r}
        if bundle_type == "transaction":
            e["request"] = {"method": "POST", "url": r["resourceType"]}
        entries.append(e)
    stamp = _iso(int(datetime.now(UTC).timestamp()) if now is None else now).replace("Z", "+00:00")
    return {"resourceType": "Bundle", "id": _uuid(patient, "bundle", stamp), "type": bundle_type,
            "timestamp": stamp, "entry": entries}


def export_patient(readings_csv: Path, patient: str, *, forecasts_csv: Path | None = None,
                   alerts_csv: Path | None = None, bundle_type: str = "collection") -> dict:
    """Read the files, pick the patient, build the Bundle (SchemaError naming file/line/field on bad input)."""
    from gateway.hospital import load_clinical_csv

    if not Path(readings_csv).is_file():
        raise SchemaError(f"{readings_csv}: no such file")
    series = load_clinical_csv(Path(readings_csv))
    if patient not in series:
        known = ", ".join(sorted(series)[:10])
        raise SchemaError(f"{readings_csv}: no rows for patient {patient!r} (patients: {known})")
    s = series[patient]
    readings = [(int(t), float(g)) for t, g in zip(s.times, s.glucose, strict=True)]
    fc = load_forecasts(forecasts_csv, patient) if forecasts_csv else []
    al = load_alerts(alerts_csv, patient) if alerts_csv else []
    return build_bundle(patient, readings, fc, al, bundle_type=bundle_type)
