"""Scenario files (TOML): what federation to replay, on which simulated clock, with which privacy and faults.

Validated with pydantic; any error names the offending field (`rounds.count`, `faults[2].kind`, ...).
Shipped scenarios live in `sim/scenarios/`; `load_scenario("demo")` finds them by name. A hospital either
simulates `patients` virtual patients or trains on real data: `data = "clinical.csv"`, a file `wearfed import`
wrote (relative paths are relative to the scenario file).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from federation.errors import ConfigError
from federation.limits import DEFAULT_MIN_CONTRIBUTORS, MIN_CONTRIBUTORS_FLOOR

SHIPPED = Path(__file__).parent / "scenarios"
FAULT_KINDS = ("broker_outage", "gateway_crash", "cloud_crash", "battery_death", "partition", "sensor_drift")
ATTACK_KINDS = ("token_burst", "forged_submission", "replayed_submission", "stolen_token")  # sim/attack_drill.py


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Meta(Section):
    name: str = Field(min_length=1, max_length=64)
    description: str = ""
    seed: int = Field(ge=0)
    days: float = Field(gt=0, le=90, description="simulated days the devices stream")
    accel: float = Field(gt=0, le=1_000_000, description="simulated seconds per wall second")


class Cohort(Section):
    source: Literal["synthetic", "uva-padova"] = "synthetic"
    sensor: str = "dexcom-g7"
    heldout_patients: int = Field(default=10, ge=1, le=10_000)
    heldout_days: float = Field(default=2.0, gt=0, le=90)


class Gateway(Section):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    devices: int = Field(ge=1, le=100_000)
    profile: str | None = None


class Hospital(Section):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    patients: int | None = Field(default=None, ge=1, le=100_000, description="virtual patients to simulate")
    data: Path | None = Field(default=None, description="or a clinical CSV from `wearfed import` (patient,time,"
                              "glucose,insulin,carbs); relative to the scenario file")
    days: float = Field(default=2.0, gt=0, le=365)
    eval_holdout_patients: int = Field(default=0, ge=0, description="kept out of training; the hospital scores "
                                       "each candidate model on them and reports the metrics (federated evaluation)")

    @field_validator("data")
    @classmethod
    def _data_exists(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is None:
            return None
        path = v if v.is_absolute() else Path((info.context or {}).get("base", ".")) / v
        if not path.is_file():
            raise ValueError(f"no such file: {path} (write it with `wearfed import FORMAT FILE... --out DIR`)")
        return path.resolve()

    @model_validator(mode="after")
    def _some_left_to_train(self) -> Hospital:
        if (self.patients is None) == (self.data is None):
            raise ValueError("give either patients (simulated) or data (a clinical CSV), not both or neither")
        if self.patients is not None and self.eval_holdout_patients >= self.patients:
            raise ValueError(f"eval_holdout_patients ({self.eval_holdout_patients}) must leave patients to train on "
                             f"({self.patients})")
        return self


class Rounds(Section):
    count: int = Field(ge=1, le=1000)
    quorum: int = Field(default=DEFAULT_MIN_CONTRIBUTORS, ge=MIN_CONTRIBUTORS_FLOOR,
                        description="distinct contributors per round; the cloud's floor is 3")
    deadline_s: float = Field(default=180.0, gt=0)
    local_epochs: int = Field(default=2, ge=1, le=100)


class Privacy(Section):
    ldp_mechanism: Literal["none", "laplace", "duchi", "piecewise", "hybrid"] = "hybrid"
    ldp_unit: Literal["patient-day", "reading"] = Field(
        default="patient-day", description="patient-day: one budget for everything a device releases in a UTC day; "
                                           "reading: the labelled event-level option (ldp_epsilon per release)")
    ldp_epsilon_per_day: float = Field(default=8.0, gt=0, description="device budget per patient-day (patient-day)")
    ldp_epsilon: float | None = Field(default=None, gt=0, description="epsilon per release (unit reading only)")
    ldp_daily_cap: float | None = Field(default=None, gt=0, description="the odometer's cap (unit reading only)")
    dp_noise_multiplier: float | None = Field(default=1.0, gt=0, description="None: DP-SGD off (studies)")
    dp_delta: float = Field(default=1e-5, gt=0, lt=1)
    dp_accountant: Literal["prv", "rdp"] = "prv"
    participant_epsilon_cap: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _epsilon_matches_mechanism(self) -> Privacy:
        if self.ldp_mechanism == "none" and self.ldp_epsilon is not None:
            raise ValueError("ldp_epsilon must be omitted when ldp_mechanism is 'none'")
        if self.ldp_unit == "patient-day" and (self.ldp_epsilon is not None or self.ldp_daily_cap is not None):
            raise ValueError("ldp_epsilon and ldp_daily_cap are per release (ldp_unit = \"reading\", the event-level "
                             "option); with ldp_unit = \"patient-day\" set ldp_epsilon_per_day")
        if self.ldp_unit == "reading" and self.ldp_mechanism != "none" and self.ldp_epsilon is None:
            raise ValueError(f"ldp_epsilon is required for ldp_mechanism '{self.ldp_mechanism}' with ldp_unit "
                             "\"reading\"")
        return self


class Fault(Section):
    kind: Literal[FAULT_KINDS]  # type: ignore[valid-type]
    at_hours: float = Field(ge=0, description="simulated hours after the start")
    target: str | None = None
    duration_minutes: float = Field(default=30.0, gt=0)
    drift_mgdl_per_day: float | None = None


class ReleaseChecks(Section):
    """After the last round: the promoted model on every inference-capable device, a tampered release refused
    by all of them, a rollback reaching all of them (`sim/wrist.py`)."""

    rollback: bool = True
    timeout_s: float = Field(default=90.0, gt=0, le=3600)


class AttackDrill(Section):
    """A scripted intrusion while round `at_round` runs (`sim/attack_drill.py`); a submission to replay is captured
    on `tap_gateway`'s link (default: the first gateway) in the rounds before."""

    at_round: int = Field(default=2, ge=2, description="the round during which the attacks run (>= 2: an earlier "
                          "round supplies the captured submission)")
    attacks: list[Literal[ATTACK_KINDS]] = Field(default=list(ATTACK_KINDS), min_length=1)  # type: ignore[valid-type]
    max_requests: int = Field(default=50, ge=1, le=10_000, description="per attack, if never refused")
    tap_gateway: str | None = None


class Scale(Section):
    """The same federation replayed at several participant counts: hospitals splitting one clinical cohort."""

    participants: list[int] = Field(min_length=2, description="participant counts, e.g. [5, 50]")
    patients: int = Field(ge=2, le=10_000, description="clinical patients split evenly among the participants")
    days: float = Field(default=2.0, gt=0, le=365, description="clinical days per patient")
    pool_processes: int = Field(default=2, ge=1, le=64, description="processes hosting the hospital nodes")
    regions: int = Field(default=0, ge=0, le=64, description="> 0: replay each count again with the hospitals' "
                         "updates summed by this many region relays (hierarchical aggregation, docs/scale.md)")

    @model_validator(mode="after")
    def _counts(self) -> Scale:
        if self.regions > min(self.participants):
            raise ValueError(f"regions ({self.regions}) must not exceed the smallest participant count "
                             f"({min(self.participants)}): a region needs a member")
        if any(n < MIN_CONTRIBUTORS_FLOOR or n > self.patients for n in self.participants):
            raise ValueError(f"each participant count must be between {MIN_CONTRIBUTORS_FLOOR} and patients "
                             f"({self.patients})")
        if len(set(self.participants)) != len(self.participants):
            raise ValueError("participant counts must be distinct")
        return self


class Scenario(Section):
    scenario: Meta
    cohort: Cohort = Cohort()
    gateways: list[Gateway] = []
    hospitals: list[Hospital] = []
    rounds: Rounds
    privacy: Privacy = Privacy()
    faults: list[Fault] = []
    scale: Scale | None = None
    release_checks: ReleaseChecks | None = None
    attack_drill: AttackDrill | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        ids = [g.id for g in self.gateways] + [h.id for h in self.hospitals]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"participant ids must be unique, repeated: {dupes}")
        if self.scale is not None:
            if ids:
                raise ValueError("a scale scenario generates its participants: leave gateways and hospitals out")
            return self
        if len(ids) < MIN_CONTRIBUTORS_FLOOR:
            raise ValueError(f"a federation needs at least {MIN_CONTRIBUTORS_FLOOR} participants (gateways + "
                             f"hospitals; the cloud decrypts no sum of fewer), got {len(ids)}")
        if self.rounds.quorum > len(ids):
            raise ValueError(f"rounds.quorum {self.rounds.quorum} exceeds the {len(ids)} participants")
        gateway_ids = [g.id for g in self.gateways]
        if self.attack_drill is not None:
            if self.attack_drill.at_round > self.rounds.count:
                raise ValueError(f"attack_drill.at_round {self.attack_drill.at_round} is after the last round "
                                 f"({self.rounds.count})")
            if not gateway_ids or self.attack_drill.tap_gateway not in (None, *gateway_ids):
                raise ValueError("attack_drill needs a gateway to tap: attack_drill.tap_gateway must name one")
        for i, f in enumerate(self.faults):
            if f.at_hours > self.scenario.days * 24:
                raise ValueError(f"faults[{i}].at_hours {f.at_hours} is after the scenario ends")
            if f.kind in ("gateway_crash", "partition", "battery_death") and f.target not in gateway_ids:
                raise ValueError(f"faults[{i}].target must name a gateway for {f.kind}, got {f.target!r}")
        return self

    @property
    def participants(self) -> list[str]:
        return [g.id for g in self.gateways] + [h.id for h in self.hospitals]


def at_scale(s: Scenario, n: int) -> Scenario:
    """`s` with its scale section expanded into `n` hospitals that split the cohort as evenly as possible."""
    if s.scale is None:
        raise ConfigError(f"scenario {s.scenario.name!r} has no [scale] section")
    base, extra = divmod(s.scale.patients, n)
    hospitals = [{"id": f"h-{k:03d}", "patients": base + (k <= extra), "days": s.scale.days} for k in range(1, n + 1)]
    doc = s.model_dump(exclude={"scale"})
    doc["scenario"]["name"] = f"{s.scenario.name}-{n}"
    doc["hospitals"] = hospitals
    doc["rounds"]["quorum"] = n  # every participant answers: the round time covers all of them
    return Scenario.model_validate(doc)


def _format_error(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        lines.append(f"{loc or '(top level)'}: {err['msg']}")
    return f"{source}: invalid scenario\n  " + "\n  ".join(lines)


def parse_scenario(text: str, *, source: str = "<scenario>", base: Path | None = None) -> Scenario:
    """`base`: the directory a hospital's relative `data` path is read from (default: the working directory)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        return Scenario.model_validate(doc, context={"base": base or Path.cwd()})
    except ValidationError as exc:
        raise ConfigError(_format_error(source, exc)) from exc


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A shipped scenario by name (`demo`, `clinic-week`, ...) or a path to a TOML file."""
    path = Path(name_or_path)
    if not path.exists():
        path = SHIPPED / f"{name_or_path}.toml"
    if not path.exists():
        shipped = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.toml")))
        raise ConfigError(f"no scenario {name_or_path!r}: not a file, and not one of the shipped ({shipped})")
    return parse_scenario(path.read_text(), source=str(path), base=path.parent)
