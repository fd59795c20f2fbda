"""What the daemons write to `status.json` every second, as typed models (pydantic v2): the gateway daemon
(`wearfed gateway run|ingest`, also as a member of a gateway pool), a lone hospital (`wearfed hospital run`) and a
member of a hospital pool (`wearfed hospital pool`). The daemons build these and write `model_dump(mode="json")`;
the replay, the metrics exporter and the tests read them back with `model_validate`.

The documents are flat, as they always were: a node's, a relay's and a drift reporter's fields sit at the top level
of the gateway's document; the models keep them there when written and gather them into `node`, `relay` and
`drift` when read. Optional parts are left out of the document when absent (`stopped` until the final write,
`acl_watch` without `--acl-watch`, `simulation_label` outside the simulation mode, a gateway's node fields for
`gateway ingest`).

Every block refuses unknown keys (`extra="forbid"`) but one: the log witness's `alarm`, the alarm file's document
as written, is open-ended.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, model_serializer, model_validator


class Block(BaseModel):
    """A closed block: unknown keys are refused. `_flat` names nested models written at this level; `_omit`
    names fields left out of the document while None."""

    model_config = ConfigDict(extra="forbid")
    _flat: ClassVar[dict[str, type[Block]]] = {}
    _omit: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _gather(cls, doc: Any) -> Any:
        if not isinstance(doc, dict) or not cls._flat:
            return doc
        doc = dict(doc)
        for name in cls._flat:
            if name in doc:
                continue
            keys = cls._flat[name].model_fields
            if any(k in doc for k in keys):
                doc[name] = {k: doc.pop(k) for k in keys if k in doc}
        return doc

    @model_serializer(mode="wrap")
    def _flatten(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        for name in self._flat:
            part = out.pop(name, None)
            if part is not None:
                out.update(part)
        for name in self._omit:
            if out.get(name) is None:
                out.pop(name, None)
        return out


# -- a gateway's ingest, consent and retention --------------------------------------------------------------------
class IngestState(Block):
    """`gateway.ingest.IngestHealth`: "stuck" once failing without storing for `stuck_after_s`."""

    state: Literal["connecting", "ok", "retrying", "stuck"]
    last_error: str | None
    messages: int  # stored by this process
    quarantined_storage_errors: int


class ConsentCounts(Block):
    """Withdrawals, counts only (`gateway.store.governance_doc`)."""

    withdrawn_devices: int
    readings_deleted_by_withdrawal: int
    quarantined_deleted_by_withdrawal: int
    readings_dropped_after_withdrawal: int
    messages_dropped_after_withdrawal: int
    withdrawals_refused: int
    reports_pending: int


class RetentionCounts(Block):
    readings_deleted: int
    quarantined_deleted: int
    runs: int


class Governance(Block):
    consent: ConsentCounts
    retention: RetentionCounts


class StoreCounts(Block):
    """`ReadingStore.counts` (also a pool's shared PostgreSQL store): the whole store, every stream."""

    ingested: int
    devices: int
    rejected: int  # quarantined messages
    duplicates: int
    device_resets: int


class AclWatchStatus(Block):
    """`gateway.acl_watch.AclWatch.status`."""

    log: str
    denials: int
    denials_not_ours: int
    contained: int
    revoked_devices: int
    reports_pending: int
    lines_read: int
    long_lines_dropped: int
    rotations: int
    truncations: int


# -- a participant node (gateway or hospital) ---------------------------------------------------------------------
class PrivacyStatus(Block):
    """DP-SGD epsilon spent, recomputed from the node's history; epsilon is per `unit` (patient or window) at
    `delta`, by `accountant`."""

    epsilon_cumulative: float
    epsilon_last_round: float
    rounds_trained: int
    delta: float
    unit: str
    accountant: str
    epsilon_cap: float | None


class LogWitnessStatus(Block):
    """`gateway.witness.LogWitness.status`: the newest audit-log checkpoint seen and checked."""

    tree_size: int | None
    root: str | None
    checks: int
    acknowledged_tree_size: int | None
    alarm: dict[str, Any] | None  # open-ended: the alarm file as written (fork or rollback evidence)


class NodeStatus(Block):
    """`gateway.node.ParticipantNode.status`."""

    _omit = ("simulation_label",)

    enrolled: bool
    answered: dict[str, str]  # round id -> "submitted" | "refused: ..."
    outbox: list[str]
    privacy: PrivacyStatus
    privacy_rng: Literal["secure", "simulation"]
    log_witness: LogWitnessStatus
    simulation_label: str | None = None


class RelayStatus(Block):
    """`gateway.relay.ModelRelay.status`."""

    model_relayed: int | None
    relay_error: str | None
    tflite_relayed_serial: int | None
    tflite_error: str | None


class DriftStatus(Block):
    """`gateway.drift.DriftReporter.status`."""

    drift_reports_sent: int
    drift_next_window_start: float | None


# -- the documents ------------------------------------------------------------------------------------------------
class GatewayStatus(StoreCounts, Governance):
    """A gateway daemon's `status.json` (a gateway pool member writes the same; its counts are the pool's)."""

    _flat = {"node": NodeStatus, "relay": RelayStatus, "drift": DriftStatus}
    _omit = ("node", "relay", "drift", "acl_watch", "stopped")

    updated: float  # Unix time
    kind: Literal["gateway"] = "gateway"
    pid: int
    subscribed: bool
    healthy: bool  # False once the ingest is "stuck"
    ingest: IngestState
    retention_days: float
    registry_devices: int | None  # None: an open registry (no devices file)
    node: NodeStatus | None = None  # `gateway run` only
    relay: RelayStatus | None = None
    drift: DriftStatus | None = None
    acl_watch: AclWatchStatus | None = None
    stopped: Literal[True] | None = None  # the final write after SIGTERM


class HospitalStatus(NodeStatus):
    """A hospital's `status.json`: `pid` for a lone `hospital run`, `pool_pid` for a member of a `hospital pool`."""

    _omit = ("simulation_label", "pid", "pool_pid", "stopped")

    updated: float  # Unix time
    kind: Literal["hospital"] = "hospital"
    pid: int | None = None
    pool_pid: int | None = None
    data: str  # the clinical CSV
    patients: int
    windows: int
    withdrawn_patients: int
    consent_reports_pending: int
    stopped: Literal[True] | None = None

    @model_validator(mode="after")
    def _one_process(self) -> HospitalStatus:
        if (self.pid is None) == (self.pool_pid is None):
            raise ValueError("a hospital status names exactly one of pid (hospital run) and pool_pid (hospital pool)")
        return self
