"""`summary.json`, the record of one replay, as a typed model (pydantic v2): `RunSummary`.

This is the contract between the replay (`sim.replay`, `sim.scale`), which validates what it writes through it, and
the run's readers (`sim.html_report` via `write_report`, the CLI's exit code, `bench.regate_summary`), which read it
through it. It lives in sim/, not federation/: no deployed process (device, gateway, cloud) writes or reads it;
federation/ holds what those processes exchange.

Required: what every replay since the first demo has recorded (`scenario`, `rounds`, `readings`, `broker`,
`custodian`, `heldout`, `wall_seconds`); the rest is optional, absent from older runs (`tests/data/demo_summary.json`
is one, with its `config` block instead of `parameters`). Unknown top-level keys are refused. Open-ended by design,
and typed only at their top level: a round's held-out scores (`sim.evaluate.evaluate` names them: `rmse30`,
`bg_rmse30`, per age group, ...), the cloud's drift status, the scenario as replayed (`parameters`), the gates,
the release checks, the attack drill and the explanations: each is another module's document, recorded as it was.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EpsilonSpent(Part):
    """A node's DP-SGD epsilon after the round, per `unit` (patient or window) at `delta`."""

    value: float  # cumulative
    round_value: float
    delta: float
    unit: str
    accountant: str


class RoundRecord(BaseModel):
    """One round: what the cloud reported and, when it produced a model, its held-out scores. The scores are extra
    keys (open-ended: one per metric `sim.evaluate.evaluate` computes), numbers or None."""

    model_config = ConfigDict(extra="allow")

    round: int
    state: str
    participants: list[str]
    refusals: list[dict[str, Any]]  # the cloud's refusal records (`federation.responses`), as reported
    model_version: int | None
    failure_reason: str | None
    model_hash: str | None = None
    model_status: str | None = None
    gates_failed: str | list[dict[str, Any]] | None = None  # the cloud's refusal detail
    metrics_by_source: dict[str, dict[str, float]] | None = None  # posted, federated, validation -> metrics
    epsilon: dict[str, EpsilonSpent]  # participant ->
    windows: dict[str, int]  # participant -> training units (patients, or windows)
    bytes_up: int
    round_seconds: float | None = None
    cpu_seconds: dict[str, float] | None = None  # cloud, region_relays, participants -> CPU s over the round (Linux)
    seconds: float


class Readings(Part):
    published: int
    ingested: int
    duplicates: int
    rejected: int
    lost: int
    device_exit_codes: dict[str, int | None] | None = None
    fleet_exit_code: int | None = None  # older runs: one fleet process


class Heldout(Part):
    patients: int
    windows: int


class Forecaster(Part):
    architecture: str
    parameters: int
    inputs: list[str]
    insulin_curve: str
    carb_absorption: str
    dp_sgd_unit: str
    dp_sgd_randomness: str


class Privacy(Part):
    """`sim.privacy_summary.summary`: the device budget (plan and odometers) and each node's DP-SGD epsilon."""

    device: dict[str, Any]
    dp_sgd: dict[str, Any]


class Cohort(Part):
    source: str
    sensor: str


class FaultEvent(Part):
    t: float  # simulated hours since `sim_start`
    kind: str
    target: str | None  # None: the fault has no one target (a broker outage)
    detail: str


class FleetPoint(Part):
    t: float  # simulated hours since `sim_start`
    published: int
    buffered: int
    dropped: int
    reconnects: int
    connected: int
    battery: float | None  # the lowest device's, 0..1


class Drift(Part):
    status: dict[str, Any]  # GET /v1/drift, as served
    alerts: list[Any] | dict[str, Any]  # GET /v1/drift/alerts, as served


class DevicePrivacy(Part):
    """`sim.run_facts.device_privacy`: per gateway, from the devices' odometers."""

    gateways: dict[str, dict[str, Any]]
    unreadable_odometers: int
    source: str


class ClarkePoints(Part):
    horizon_min: int
    reference_kind: str
    reference: list[float]
    prediction: list[float]
    model_version: int
    round: int


class RunBrief(Part):
    """One run of a scale study, in the study's summary."""

    rounds: list[RoundRecord]
    wall_seconds: float
    readings: Readings


class RunSummary(Part):
    scenario: str
    rounds: list[RoundRecord]
    readings: Readings
    broker: str | None
    custodian: str
    heldout: Heldout
    wall_seconds: float
    forecaster: Forecaster | None = None
    privacy: Privacy | None = None
    cohort: Cohort | None = None
    initial_model: dict[str, float] | None = None  # the untrained v0's RMSE (mg/dL) by horizon
    faults: list[FaultEvent] | None = None
    fleet_timeline: list[FleetPoint] | None = None
    drift: Drift | None = None
    parameters: dict[str, Any] | None = None  # the scenario as replayed (`sim.scenario.Scenario`)
    gates: dict[str, Any] | None = None  # the promotion gates the cloud ran with
    device_privacy: DevicePrivacy | None = None
    sim_start: int | float | None = None  # Unix time
    release_checks: dict[str, Any] | None = None  # `Replay.release_checks`
    explanations: dict[str, Any] | None = None  # `sim.report_explanations.fetch`
    attack_drill: dict[str, Any] | None = None  # `sim.attack_drill.report`
    clarke_points: ClarkePoints | None = None
    scale: dict[str, Any] | None = None  # a scale study's ratios (`sim.scale`)
    runs: dict[str, RunBrief] | None = None  # a scale study: per participant count
    config: dict[str, Any] | None = None  # older runs: the demo's options

    def document(self) -> dict[str, Any]:
        """The summary as written: the keys it was given, nothing added (a score that is NaN stays NaN)."""
        return self.model_dump(exclude_unset=True)


class SummaryError(ValueError):
    """A summary that is not a `RunSummary`: the message names each field at fault."""


def parse_summary(doc: object, *, source: str = "summary") -> RunSummary:
    try:
        return RunSummary.model_validate(doc)
    except ValidationError as exc:
        faults = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise SummaryError(f"{source} is not a run summary: {faults}") from None


def load_summary(path: Path) -> RunSummary:
    """Read a replay's summary.json; raises `SummaryError` naming the fields at fault."""
    return parse_summary(json.loads(Path(path).read_text()), source=str(path))


def write_summary(doc: dict[str, Any], out: Path) -> RunSummary:
    """Validate `doc` and write it to `out/summary.json` (refused, naming the field, before anything is written)."""
    run = parse_summary(json.loads(json.dumps(doc, default=float)))  # numpy scalars as plain numbers first
    (out / "summary.json").write_text(json.dumps(run.document(), indent=2))
    return run
