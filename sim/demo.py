"""`wearfed demo`: the shipped `demo` scenario replayed on this machine, with a few knobs on the command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sim.replay import run_replay
from sim.scenario import Scenario, load_scenario


@dataclass(frozen=True)
class DemoConfig:
    """Overrides of the shipped demo scenario; None keeps the scenario's value."""

    out: Path
    gateways: int | None = None
    devices_per_gateway: int | None = None
    hospitals: int | None = None
    hospital_patients: int | None = None
    days: float | None = None
    accel: float | None = None
    rounds: int | None = None
    seed: int | None = None
    source: str | None = None
    ldp_mechanism: str | None = None
    ldp_unit: str | None = None  # "patient-day" (the scenario's) or "reading" (the labelled event-level option)
    ldp_epsilon: float | None = None  # per patient-day, or per reading with ldp_unit "reading"
    heldout_patients: int | None = None
    broker: str = "auto"
    keep_open: bool = False  # leave the federation up after the last round (the dashboard) until Ctrl-C

    def scenario(self) -> Scenario:
        doc = load_scenario("demo").model_dump()
        meta, cohort, privacy = doc["scenario"], doc["cohort"], doc["privacy"]
        for key, value in (("days", self.days), ("accel", self.accel), ("seed", self.seed)):
            if value is not None:
                meta[key] = value
        if self.source is not None:
            cohort["source"] = self.source
        if self.heldout_patients is not None:
            cohort["heldout_patients"] = self.heldout_patients
        if self.ldp_mechanism is not None:
            privacy["ldp_mechanism"] = self.ldp_mechanism
        if self.ldp_unit is not None:
            privacy["ldp_unit"] = self.ldp_unit
        if privacy["ldp_mechanism"] == "none":
            privacy["ldp_epsilon"] = privacy["ldp_daily_cap"] = None
        elif privacy["ldp_unit"] == "reading":
            # given alone, --ldp-epsilon applies to the scenario's mechanism; validated (> 0) by the scenario model
            privacy["ldp_epsilon"] = self.ldp_epsilon if self.ldp_epsilon is not None else \
                (privacy["ldp_epsilon"] or 8.0)
        else:
            privacy["ldp_epsilon"] = privacy["ldp_daily_cap"] = None
            if self.ldp_epsilon is not None:
                privacy["ldp_epsilon_per_day"] = self.ldp_epsilon
        if self.rounds is not None:
            doc["rounds"]["count"] = self.rounds
        n_gw = self.gateways or len(doc["gateways"])
        per_gw = self.devices_per_gateway or doc["gateways"][0]["devices"]
        # the shipped profiles per position; the last one (the demo's inference-capable hubs) stays last
        profiles = [g["profile"] for g in doc["gateways"]]
        doc["gateways"] = [{"id": f"gw-{i}", "devices": per_gw, "profile": profiles[-1] if i == n_gw else
                            profiles[min(i, len(profiles)) - 1]} for i in range(1, n_gw + 1)]
        n_h = len(doc["hospitals"]) if self.hospitals is None else self.hospitals
        per_h = self.hospital_patients or (doc["hospitals"][0]["patients"] if doc["hospitals"] else 10)
        holdout = doc["hospitals"][0]["eval_holdout_patients"] if doc["hospitals"] else 0
        doc["hospitals"] = [{"id": f"hosp-{i}", "patients": per_h, "days": 2.0,
                             "eval_holdout_patients": min(holdout, per_h - 1)} for i in range(1, n_h + 1)]
        return Scenario.model_validate(doc)


def run_demo(cfg: DemoConfig) -> dict:
    return run_replay(cfg.scenario(), cfg.out, broker=cfg.broker, keep_open=cfg.keep_open)
