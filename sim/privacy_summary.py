"""The privacy part of a replay's summary.json: the device budget per patient-day (declared by the scenario, the
release plan it gives each stream, and what the devices' odometers actually charged) and the DP-SGD epsilon per
patient of every node after the last round."""

from __future__ import annotations

import json
import math
from pathlib import Path

from sim.scenario import Scenario


def device_plan(s: Scenario, *, treatments: bool = True, interval_s: int = 300) -> dict:
    """What each device releases per day and at which epsilon, from the scenario's privacy section (the same
    `device.release_plan.StreamRelease` the devices run)."""
    from device.release_plan import StreamRelease

    p = s.privacy
    if p.ldp_mechanism == "none":
        return {"unit": None, "mechanism": "none", "note": "no local DP: devices send raw readings (studies only)"}
    if p.ldp_unit == "patient-day":
        mode = StreamRelease(mechanism=p.ldp_mechanism, unit="patient-day", budget=p.ldp_epsilon_per_day,
                             epsilon_per_reading=p.ldp_epsilon_per_day, interval_s=interval_s, treatments=treatments)
        per_day = {"glucose": math.ceil(86_400 / interval_s / mode.glucose_every), "insulin": 24, "carbs": 24}
        streams = {st: {"epsilon_per_release": mode.epsilon(st), "releases_per_day": per_day[st],
                        "epsilon_per_day": mode.epsilon(st) * per_day[st]} for st in mode.streams()}
        return {"unit": "patient-day", "epsilon_per_patient_day": p.ldp_epsilon_per_day, "delta": 0.0,
                "mechanism": p.ldp_mechanism, "accountant": "sequential composition (pure LDP)",
                "covers": list(streams), "streams": streams,
                "epsilon_per_patient_day_planned": math.fsum(v["epsilon_per_day"] for v in streams.values())}
    readings = 86_400 // interval_s
    return {"unit": "reading", "label": "event-level option: the guarantee is per release, not per patient",
            "epsilon_per_reading": p.ldp_epsilon, "daily_cap": p.ldp_daily_cap, "mechanism": p.ldp_mechanism,
            "epsilon_per_day_if_every_reading": (p.ldp_epsilon or 0.0) * readings}


def odometers(out: Path) -> dict:
    """What the devices' odometers charged (read-only from their state files): per device and UTC day."""
    spent: list[float] = []
    units, caps, devices = set(), set(), 0
    for path in sorted(out.glob("*/odometer/*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            days = {d: float(e["epsilon"]) for d, e in doc["days"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            continue  # the device's own code refuses a corrupt state; the summary just does not count it
        devices += 1
        units.add(doc.get("unit"))
        caps.add(doc.get("daily_cap"))
        spent += list(days.values())
    if not devices:
        return {"devices": 0}
    return {"devices": devices, "unit": sorted(map(str, units)), "daily_cap": sorted(c for c in caps if c is not None),
            "patient_days": len(spent), "max_epsilon_per_day": max(spent, default=0.0),
            "mean_epsilon_per_day": math.fsum(spent) / len(spent) if spent else 0.0}


def dp_sgd(rounds: list[dict], s: Scenario) -> dict:
    """Each node's DP-SGD epsilon after its last round, in its unit (per patient at every node by default)."""
    last: dict[str, dict] = {}
    for r in rounds:
        for who, e in (r.get("epsilon") or {}).items():
            last[who] = e
    return {"participants": {who: {"epsilon": e["value"], "delta": e["delta"], "unit": f"per {e['unit']}",
                                   "accountant": e["accountant"]} for who, e in sorted(last.items())},
            "cap": s.privacy.participant_epsilon_cap, "noise_multiplier": s.privacy.dp_noise_multiplier}


def summary(s: Scenario, out: Path, rounds: list[dict]) -> dict:
    return {"device": {**device_plan(s), "odometers": odometers(out)}, "dp_sgd": dp_sgd(rounds, s)}


def describe(s: Scenario) -> str:
    """One console line: the device budget and its unit, the DP-SGD unit."""
    plan = device_plan(s)
    if plan["unit"] == "patient-day":
        parts = ", ".join(f"{st} {v['releases_per_day']}/day at {v['epsilon_per_release']:.4g}"
                          for st, v in plan["streams"].items())
        dev = (f"device LDP {plan['mechanism']}: epsilon {plan['epsilon_per_patient_day']:g} per patient-day for "
               f"everything a device releases ({parts})")
    elif plan["unit"] == "reading":
        dev = (f"device LDP {plan['mechanism']}: epsilon {plan['epsilon_per_reading']:g} per reading (event-level "
               f"option; {plan['epsilon_per_day_if_every_reading']:g} per patient-day if every reading is released)")
    else:
        dev = "no device LDP"
    return f"{dev}; DP-SGD: epsilon per patient at every node, delta {s.privacy.dp_delta:g}"
