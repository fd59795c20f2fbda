"""HTTP wire schemas between participants (gateways, hospitals) and the cloud aggregator (pydantic v2)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from federation.dp_accounting import ACCOUNTANTS, UNITS
from federation.limits import MAX_BATCH, MAX_UPDATE_BYTES, PARTICIPANT_ID

__all__ = ["MAX_UPDATE_BYTES", "PARTICIPANT_ID"]  # re-exported: older imports name them here


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Enrollment(Strict):
    participant_id: str = Field(pattern=PARTICIPANT_ID)
    kind: Literal["gateway", "hospital"]
    public_key: str = Field(min_length=40, max_length=64, description="raw Ed25519 public key, base64")
    token: str = Field(min_length=1, max_length=256)


class DPReport(Strict):
    """What the node spent this round, and the full history the cloud recomputes epsilon from.

    `unit` is what one sampled-and-clipped record was: "patient" (user-level DP-SGD) or "window" (record-level, only
    when a node chose it); every epsilon here is per that unit. No default: an epsilon must name its unit."""

    noise_multiplier: float = Field(gt=0, le=1e3)
    sample_rate: float = Field(gt=0, le=1)
    steps: int = Field(ge=1, le=10_000_000)
    accountant: Literal[ACCOUNTANTS]  # type: ignore[valid-type]
    delta: float = Field(gt=0, lt=1)
    unit: Literal[UNITS]  # type: ignore[valid-type]
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
    region: str | None = Field(default=None, pattern=PARTICIPANT_ID, description="the region relay this "
                               "participant chose to sum its update (federation.region); absent: sent to the cloud")

    @model_serializer(mode="wrap")
    def _direct_has_no_region(self, handler: SerializerFunctionWrapHandler) -> dict:
        """A direct submission's signed document has no `region` key, exactly as before regions existed."""
        doc = handler(self)
        if doc.get("region") is None:
            doc.pop("region", None)
        return doc


class Submission(Strict):
    envelope: UpdateEnvelope
    signature: str = Field(max_length=200)
    ciphertext: str = Field(description="base64 of the CBOR-packed CKKS ciphertexts")


# -- hierarchical aggregation (federation.region; the statement is signed in federation.region.DOMAIN) -------


class RegionMember(Strict):
    """One participant's signed envelope, forwarded by its region without the ciphertext (summed into the aggregate)."""

    envelope: UpdateEnvelope
    signature: str = Field(max_length=200)


class RegionStatement(Strict):
    kind: Literal["region.aggregate"] = "region.aggregate"
    round: int = Field(ge=1)
    region: str = Field(pattern=PARTICIPANT_ID)
    aggregate_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    contributors: dict[str, str] = Field(min_length=1, max_length=64, description="participant -> the sha256 of the "
                                         "ciphertext it signed; the aggregate is their sum, in participant order")


class RegionAggregate(Strict):
    statement: RegionStatement
    signature: str = Field(max_length=200, description="the region's Ed25519 signature of the statement")
    members: list[RegionMember] = Field(min_length=1, max_length=64)
    aggregate: str = Field(description="base64 of the CBOR-packed CKKS sum")


class RegionInputs(Strict):
    """A region's answer to the cloud's audit of one aggregate: every input it summed (base64)."""

    aggregate_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    inputs: dict[str, str] = Field(min_length=1, max_length=64, description="participant -> base64 ciphertext")
    signature: str = Field(max_length=200, description="the region's signature of {round, region, aggregate_sha256, "
                           "inputs' sha256}")


class RegionEnrollment(Strict):
    region_id: str = Field(pattern=PARTICIPANT_ID)
    public_key: str = Field(min_length=40, max_length=64, description="raw Ed25519 public key, base64")
    token: str = Field(min_length=1, max_length=256)


class Refusal(Strict):
    """A participant declining a round (for instance: it would pass its privacy cap)."""

    round: int = Field(ge=1)
    participant: str = Field(pattern=PARTICIPANT_ID)
    reason: str = Field(min_length=1, max_length=500)
    signature: str = Field(max_length=200)


class OpenRound(Strict):
    quorum: int = Field(ge=2, le=10_000, description="distinct contributors needed; the cloud refuses a quorum below "
                        "its configured minimum (at least 3)")
    deadline_s: float = Field(gt=0, le=7 * 86400)
    data_cutoff: float | None = Field(default=None, description="simulated unix time; train on data up to it")
    local_epochs: int = Field(default=1, ge=1, le=100)


# -- secure aggregation (federation.secagg; every doc is signed in federation.secagg.DOMAIN) -----------------
_B64_KEY = {"min_length": 44, "max_length": 44, "pattern": r"^[A-Za-z0-9+/]{43}=$"}
_HEX64 = r"^[0-9a-f]{64}$"
_SHARE_HEX = r"^[0-9a-f]{132}$"


class SecAggKeyAdvert(Strict):
    kind: Literal["secagg.keys"] = "secagg.keys"
    round: int = Field(ge=1)
    participant: str = Field(pattern=PARTICIPANT_ID)
    c_pk: str = Field(description="X25519 public key for share encryption, base64", **_B64_KEY)
    s_pk: str = Field(description="X25519 public key for pairwise masks, base64", **_B64_KEY)
    b_commit: str = Field(pattern=_HEX64, description="SHA-256 commitment to the self-mask seed")


class SecAggKeys(Strict):
    advert: SecAggKeyAdvert
    signature: str = Field(max_length=200)


class SecAggShareDoc(Strict):
    kind: Literal["secagg.shares"] = "secagg.shares"
    round: int = Field(ge=1)
    participant: str = Field(pattern=PARTICIPANT_ID)
    shares: dict[str, str] = Field(max_length=64, description="neighbour -> base64 ChaCha20-Poly1305 of its shares")


class SecAggShares(Strict):
    doc: SecAggShareDoc
    signature: str = Field(max_length=200)


class SecAggConsistencyDoc(Strict):
    kind: Literal["secagg.consistency"] = "secagg.consistency"
    round: int = Field(ge=1)
    participant: str = Field(pattern=PARTICIPANT_ID)
    view_sha256: str = Field(pattern=_HEX64)


class SecAggConsistency(Strict):
    doc: SecAggConsistencyDoc
    signature: str = Field(max_length=200)


class SecAggUnmaskDoc(Strict):
    kind: Literal["secagg.unmask"] = "secagg.unmask"
    round: int = Field(ge=1)
    participant: str = Field(pattern=PARTICIPANT_ID)
    view_sha256: str = Field(pattern=_HEX64)
    b_shares: dict[str, str] = Field(max_length=64, description="survivor -> hex share of its self-mask seed")
    sk_shares: dict[str, str] = Field(max_length=64, description="dropped -> hex share of its mask key")


class SecAggUnmask(Strict):
    doc: SecAggUnmaskDoc
    signature: str = Field(max_length=200)


class SecAggViewRequest(Strict):
    """A participant asking for its view of a round (signed; `at` within 5 minutes of the cloud's clock)."""

    kind: Literal["secagg.view"] = "secagg.view"
    round: int = Field(ge=1)
    participant: str = Field(pattern=PARTICIPANT_ID)
    at: float
    signature: str = Field(max_length=200)


class SecAggBatch(Strict):
    """Several participants' signed secure-aggregation messages in one request (a hospital pool's nodes send one
    phase's): the carrier needs no identity of its own; the cloud checks each message on its own signature, exactly as
    if it had been posted alone, and answers each one (`SecAggBatchResult`)."""

    keys: list[SecAggKeys] = Field(default=[], max_length=MAX_BATCH)
    shares: list[SecAggShares] = Field(default=[], max_length=MAX_BATCH)
    consistency: list[SecAggConsistency] = Field(default=[], max_length=MAX_BATCH)
    unmask: list[SecAggUnmask] = Field(default=[], max_length=MAX_BATCH)


class SecAggViewBatch(Strict):
    """Several participants' signed view requests in one request (`SecAggViews` answers them)."""

    requests: list[SecAggViewRequest] = Field(min_length=1, max_length=MAX_BATCH)


# -- operator / governance requests (bearer-token callers) -------------------------------------------


class CreateUser(Strict):
    name: str = Field(pattern=PARTICIPANT_ID)
    role: Literal["admin", "data_scientist", "compliance_officer", "operator", "auditor", "participant",
                  "monitor"]


class IssueEnrollmentToken(Strict):
    participant_id: str | None = Field(default=None, pattern=PARTICIPANT_ID,
                                       description="bind the token to this participant id (recommended)")
    kind: Literal["gateway", "hospital", "region"] | None = None
    ttl_s: float = Field(default=7 * 86400, gt=0, le=90 * 86400)


class EvaluationMetrics(Strict):
    """Held-out metrics of a round's candidate model, computed off-cloud (the cloud has no patient data)."""

    metrics: dict[str, float] = Field(max_length=64, description="must include rmse30 (mg/dL)")


class Decision(Strict):
    reason: str = Field(default="", max_length=500)


class EpsilonCap(Strict):
    epsilon_cap: float | None = Field(gt=0, le=1e3, description="epsilon cap (per the participant's unit: patient, "
                                      "or window if it chose record-level DP); null: the global cap")


class UnsealShare(Strict):
    share: str = Field(min_length=10, max_length=200)
