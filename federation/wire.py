"""HTTP wire schemas between participants (gateways, hospitals) and the cloud aggregator (pydantic v2)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from federation.dp_accounting import ACCOUNTANTS

PARTICIPANT_ID = r"^[a-z0-9][a-z0-9._-]{0,62}$"
MAX_UPDATE_BYTES = 4 * 1024 * 1024  # a whole submission body, base64 ciphertext included


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Enrollment(Strict):
    participant_id: str = Field(pattern=PARTICIPANT_ID)
    kind: Literal["gateway", "hospital"]
    public_key: str = Field(min_length=40, max_length=64, description="raw Ed25519 public key, base64")
    token: str = Field(min_length=1, max_length=256)


class DPReport(Strict):
    """What the node spent this round, and the full history the cloud recomputes epsilon from."""

    noise_multiplier: float = Field(gt=0, le=1e3)
    sample_rate: float = Field(gt=0, le=1)
    steps: int = Field(ge=1, le=10_000_000)
    accountant: Literal[ACCOUNTANTS]  # type: ignore[valid-type]
    delta: float = Field(gt=0, lt=1)
    unit: Literal["window"] = "window"
    epsilon_round: float = Field(ge=0)
    epsilon_cumulative: float = Field(ge=0)
    history: list[tuple[float, float, int]] = Field(max_length=100_000)


class UpdateEnvelope(Strict):
    round: int = Field(ge=1)
    participant: str = Field(pattern=PARTICIPANT_ID)
    n_samples: int = Field(ge=1, le=100_000_000)
    base_model_version: int = Field(ge=0)
    ciphertext_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    idempotency_key: str = Field(min_length=8, max_length=128)
    dp: DPReport


class Submission(Strict):
    envelope: UpdateEnvelope
    signature: str = Field(max_length=200)
    ciphertext: str = Field(description="base64 of the CBOR-packed CKKS ciphertexts")


class Refusal(Strict):
    """A participant declining a round (for instance: it would pass its privacy cap)."""

    round: int = Field(ge=1)
    participant: str = Field(pattern=PARTICIPANT_ID)
    reason: str = Field(min_length=1, max_length=500)
    signature: str = Field(max_length=200)


class OpenRound(Strict):
    quorum: int = Field(ge=2, le=10_000, description="at least 2: no aggregate of one update is decrypted")
    deadline_s: float = Field(gt=0, le=7 * 86400)
    data_cutoff: float | None = Field(default=None, description="simulated unix time; train on data up to it")
    local_epochs: int = Field(default=1, ge=1, le=100)


# -- operator / governance requests (bearer-token callers) -------------------------------------------


class CreateUser(Strict):
    name: str = Field(pattern=PARTICIPANT_ID)
    role: Literal["admin", "data_scientist", "compliance_officer", "operator", "auditor", "participant"]


class IssueEnrollmentToken(Strict):
    participant_id: str | None = Field(default=None, pattern=PARTICIPANT_ID,
                                       description="bind the token to this participant id (recommended)")
    kind: Literal["gateway", "hospital"] | None = None
    ttl_s: float = Field(default=7 * 86400, gt=0, le=90 * 86400)


class EvaluationMetrics(Strict):
    """Held-out metrics of a round's candidate model, computed off-cloud (the cloud has no patient data)."""

    metrics: dict[str, float] = Field(max_length=64, description="must include rmse30 (mg/dL)")


class Decision(Strict):
    reason: str = Field(default="", max_length=500)


class EpsilonCap(Strict):
    epsilon_cap: float | None = Field(gt=0, le=1e3, description="per-window epsilon cap; null: the global cap")


class UnsealShare(Strict):
    share: str = Field(min_length=10, max_length=200)
