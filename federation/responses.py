"""What the cloud answers, as typed models (pydantic v2): the cloud builds them, nodes, the CLI and the replay parse
them, and the OpenAPI document publishes them. Requests are in `federation.wire`.

Models are lenient on extra fields (`extra="ignore"`) so an older node can read a newer cloud's answer.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


def refusal_detail(resp: Any) -> str:
    """The reason in a refused answer (an `httpx.Response`): its `detail`, else its text."""
    try:
        doc = resp.json()
    except ValueError:
        return resp.text
    return str(doc.get("detail", resp.text)) if isinstance(doc, dict) else resp.text


class Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ErrorBody(Response):
    """Every refusal: `detail` is the reason (a string), or a list of {loc, msg} for a malformed request (422)."""

    detail: str | list[dict[str, Any]]


class Health(Response):
    status: str
    custodian: str
    custodian_state: str
    warning: str | None = None


class Whoami(Response):
    name: str
    role: str


class UserCreated(Response):
    name: str
    role: str
    token: str  # shown once


class UserView(Response):
    name: str
    role: str
    created_by: str
    disabled: bool


class EnrollmentTokenIssued(Response):
    token: str  # shown once
    participant_id: str | None
    kind: str | None
    uses: int
    expires_at: str


class Enrolled(Response):
    participant_id: str
    status: str
    binding: dict[str, Any] = {}  # what the node pins (federation.enrollment): CKKS key id and parameters, cloud keys
    binding_mac: str = ""  # HMAC-SHA256 of the binding keyed by SHA-256 of the enrollment token


class ApprovalView(Response):
    """A two-person action (cloud.approvals): pending until a different user with an approver role decides it."""

    id: int
    action: str
    params: dict[str, Any]
    state: str
    requested_by: str
    requested_at: str
    expires_at: str
    decided_by: str | None = None
    reason: str | None = None
    result: dict[str, Any] | None = None
    secret: dict[str, Any] | None = None  # to the requester only, once: a new bearer or enrollment token


class ParticipantView(Response):
    id: str
    kind: str
    epsilon_cap: float | None
    halted: bool
    epsilon_spent: float


class PublicRound(Response):
    """What a participant needs to answer the newest round (no staff names, no metrics)."""

    round: int
    state: str
    quorum: int
    expected: list[str]
    base_model_version: int
    local_epochs: int
    data_cutoff: float | None
    deadline_at: str
    result_model_version: int | None = None
    failure_reason: str | None = None
    secagg_phase: str | None = None  # secure aggregation's sub-phase while collecting (cloud.secagg)


class RoundView(PublicRound):
    opened_by: str
    contributors: list[str] | None = None
    evaluated_by: str | None = None
    approved_by: str | None = None
    decided_by: str | None = None
    model_status: str | None = None
    metrics: dict[str, float] | None = None
    progress: dict[str, Any] | None = None  # aggregation/decryption in hand: stage, done, total


class UpdateRecord(Response):
    participant: str
    n_samples: int
    dp: dict[str, Any]
    bytes: int
    ciphertext_sha256: str


class RefusalRecord(Response):
    participant: str
    reason: str


class RoundReport(RoundView):
    updates: list[UpdateRecord] = []
    refusals: list[RefusalRecord] = []


class SubmissionAck(Response):
    status: str
    duplicate: bool
    round: int


class RegionAck(Response):
    """The cloud's answer to a region aggregate: accepted, or `audit` (post every input it summed, signed)."""

    status: Literal["accepted", "audit"]
    duplicate: bool
    round: int
    aggregate_sha256: str
    contributors: list[str]


class RefusalAck(Response):
    status: str
    round: int


class RollbackResult(Response):
    promoted: int
    rolled_back: int


class ModelSummary(Response):
    version: int
    status: str
    round: int | None
    hash: str
    created_at: str
    participants: list[str]
    replaced_version: int | None = None


class ModelView(Response):
    version: int
    architecture: str
    hash: str
    created_at: str
    round: int | None
    participants: list[str]
    n_samples: int
    status: str
    metrics: dict[str, float] | None = None
    privacy: dict[str, Any] | None = None
    weights: str  # base64 of the float32 weights


class ReleaseKey(Response):
    public_key: str
    algorithm: str


class EvaluationRecord(Response):
    source: str
    reporter: str
    metrics: dict[str, float]
    at: str


class Evaluations(Response):
    version: int
    by_source: dict[str, dict[str, float]]
    reports: list[EvaluationRecord]


class EvaluationAck(Response):
    status: str
    model_version: int


class DriftAck(Response):
    status: str
    kl_nats: float | None = None
    alert: bool = False
    reference_version: int | None = None
    threshold_nats: float | None = None


class AlertView(Response):
    id: int
    kind: str | None = None
    participant: str | None
    detail: dict[str, Any]
    at: str


class AuditEntry(Response):
    """One audit log entry; `rows` are the state rows it commits (cloud/state_binding.py), part of its leaf hash."""

    seq: int
    at: str
    kind: str
    actor: str
    detail: dict[str, Any]
    rows: list[dict[str, Any]] | None = None


class ConsistencyProof(Response):
    """RFC 9162 consistency proof (hex, section 2.1.4) between two tree sizes of the audit log."""

    old_size: int
    new_size: int
    proof: list[str]


class CheckpointView(Response):
    tree_size: int
    body: str
    signature: str
    public_key: str


class InclusionProof(Response):
    seq: int
    tree_size: int
    root: str
    proof: list[str]


class PrivacySpendView(Response):
    round: int
    epsilon_recomputed: float
    epsilon_declared: float
    epsilon_round: float
    delta: float
    accountant: str
    steps: int


class PrivacyAccount(Response):
    participant: str
    cap: float | None
    halted: bool
    epsilon_spent: float
    unit: str
    entries: list[PrivacySpendView]


class CustodianStatus(Response):
    state: str  # sealed | unsealed
    mode: str | None = None
    threshold: int | None = None
    shares_received: int | None = None


class SecAggAck(Response):
    status: str
    duplicate: bool
    round: int
    phase: str


class SecAggAdvertView(Response):
    participant: str
    identity_key: str  # the enrolled Ed25519 key that signed the advert
    advert: dict[str, Any]
    signature: str


class SecAggView(Response):
    """What one participant needs for the current phase of a round's secure aggregation."""

    round: int
    phase: str
    phase_deadline_at: str
    adverts: list[SecAggAdvertView] = []  # U1, once advertising closed
    u2: list[str] | None = None
    u3: list[str] | None = None
    inbox: dict[str, str] = {}  # sender -> this participant's encrypted shares
    consistency: list[dict[str, str]] = []  # {participant, signature} over the round's view
    sent: list[str] = []  # phases this participant has answered


class SecAggBatchItem(Response):
    """One message of a batch: accepted (status 200) or refused with the status and reason it would get alone."""

    participant: str
    phase: str
    status: int
    duplicate: bool = False
    detail: str | None = None


class SecAggBatchResult(Response):
    round: int
    results: list[SecAggBatchItem]  # in the batch's order


class SecAggOwnView(Response):
    """What differs between participants' views: the shares sent to this one and what it has answered."""

    participant: str
    status: int  # 200, or the refusal's status (detail: its reason)
    detail: str | None = None
    inbox: dict[str, str] = {}
    sent: list[str] = []


class SecAggViews(Response):
    """Several participants' views of a round: what they share, once, and each one's own part."""

    round: int
    phase: str = ""  # empty when every request was refused
    phase_deadline_at: str = ""
    adverts: list[SecAggAdvertView] = []
    u2: list[str] | None = None
    u3: list[str] | None = None
    consistency: list[dict[str, str]] = []
    views: list[SecAggOwnView]  # in the requests' order

    def view_of(self, own: SecAggOwnView) -> SecAggView:
        """The view one participant would have been given alone."""
        return SecAggView(round=self.round, phase=self.phase, phase_deadline_at=self.phase_deadline_at,
                          adverts=self.adverts, u2=self.u2, u3=self.u3, inbox=own.inbox,
                          consistency=self.consistency, sent=own.sent)


class WitnessAckResult(Response):
    """One acknowledgement of a batch (`POST /v1/log/witness/batch`): kept (200) or refused as it would be alone."""

    participant: str
    status: int
    detail: str | None = None
    tree_size: int | None = None
    behind: int | None = None  # checkpoints the log grew since the acknowledged one


class WitnessAckResults(Response):
    results: list[WitnessAckResult]  # in the batch's order


class SecAggStatus(Response):
    round: int
    phase: str
    phase_deadline_at: str
    degree: int | None = None
    threshold: int | None = None
    dropout_budget: int | None = None
    u1: list[str] | None = None
    u2: list[str] | None = None
    u3: list[str] | None = None
    u4: list[str] | None = None
    answered: dict[str, list[str]] = {}
