"""Facts a replay's summary carries for its reader: the run's parameters, the gates, the devices' LDP spend.

The devices' spend is read from their privacy odometers (`device/odometer.py`, one JSON file per device under
`<run>/fleet-*/**/odometer/` and `<run>/device-*/odometer/`): each UTC day's charged epsilon is what that
patient-day cost, whatever the declared unit (per patient-day, or event-level per reading summed over the day by
basic composition, as the odometer charges it).
"""

from __future__ import annotations

import json
from pathlib import Path

from cloud.gates import load_gates
from sim.scenario import Scenario


def run_parameters(s: Scenario) -> dict:
    """The scenario as replayed (every knob, after the demo's overrides), for the report's parameter table."""
    return s.model_dump(mode="json")


def promotion_gates() -> dict:
    """The gates the replay's cloud runs with (it passes no --gates: the shipped default file)."""
    return load_gates(None).as_dict()


def device_privacy(out: Path) -> dict:
    """Per gateway: the devices' mechanism, declared unit and budget, and the largest epsilon any one of its devices
    spent in one UTC day (per patient-day). Unreadable odometer files are counted, not hidden."""
    groups: dict[str, dict] = {}
    unreadable = 0
    files = sorted({*out.glob("fleet-*/**/odometer/*.json"), *out.glob("device-*/**/odometer/*.json")})
    for path in files:
        try:
            doc = json.loads(path.read_text())
            days = {d: float(v["epsilon"]) for d, v in doc["days"].items()}
            device = path.stem.rsplit("-", 1)[0]
            gateway = device.rsplit("-dev", 1)[0]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            unreadable += 1
            continue
        g = groups.setdefault(gateway, {"devices": 0, "mechanism": doc.get("mechanism"), "unit": doc.get("unit"),
                                        "epsilon_per_reading": doc.get("epsilon_per_reading"),
                                        "daily_cap": doc.get("daily_cap"), "delta": doc.get("delta", 0.0),
                                        "accountant": doc.get("accountant"), "max_per_patient_day": 0.0,
                                        "patient_days": 0})
        g["devices"] += 1
        g["patient_days"] += len(days)
        g["max_per_patient_day"] = max([g["max_per_patient_day"], *days.values()])
    return {"gateways": dict(sorted(groups.items())), "unreadable_odometers": unreadable,
            "source": "device privacy odometers (epsilon charged per UTC day = per patient-day)"}
