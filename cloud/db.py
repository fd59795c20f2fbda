"""Cloud state in SQLAlchemy 2 (`Base`): the tables of who takes part and of rounds: users, enrollment tokens,
participants, rounds, updates, regions and their aggregates, secure-aggregation state. Everything the aggregator
needs to resume a round after a `kill -9` is here: the round row carries the stored aggregate, so aggregation and
decryption can be redone from the database alone. What the cloud records around them: `cloud.record_db`; the
engine (SQLite file by default, PostgreSQL by URL, WEARFED_DB_URL): `cloud.engine`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    """A human or service account; only the SHA-256 of its bearer token is stored."""

    __tablename__ = "users"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(32))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class EnrollmentToken(Base):
    """A one-time provisioning token (stored hashed); `used_by` is set when a participant consumes it."""

    __tablename__ = "enrollment_tokens"
    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    participant_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # bound to one id, or any
    kind: Mapped[str | None] = mapped_column(String(16), nullable=True)
    issued_by: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    uses_left: Mapped[int] = mapped_column(Integer, default=1)
    used_by: Mapped[list] = mapped_column(JSON, default=list)


class Participant(Base):
    __tablename__ = "participants"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    public_key: Mapped[str] = mapped_column(String(64))
    enrolled_at: Mapped[datetime] = mapped_column(default=utcnow)
    epsilon_cap: Mapped[float | None] = mapped_column(Float, nullable=True)  # None: the global cap applies
    halted: Mapped[bool] = mapped_column(Boolean, default=False)  # at its privacy cap: no further rounds


class Round(Base):
    __tablename__ = "rounds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    quorum: Mapped[int] = mapped_column(Integer)
    expected: Mapped[list] = mapped_column(JSON)
    base_model_version: Mapped[int] = mapped_column(Integer)
    local_epochs: Mapped[int] = mapped_column(Integer, default=1)
    data_cutoff: Mapped[float | None] = mapped_column(Float, nullable=True)
    opened_by: Mapped[str] = mapped_column(String(64), default="")
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    deadline_at: Mapped[datetime] = mapped_column()
    closed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    contributors: Mapped[list | None] = mapped_column(JSON, nullable=True)  # frozen when collection closes
    aggregate: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    aggregate_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    result_model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    evaluated_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    approved_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(64), nullable=True)  # promoted or rejected by


class Update(Base):
    __tablename__ = "updates"
    __table_args__ = (UniqueConstraint("round_id", "participant"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    participant: Mapped[str] = mapped_column(ForeignKey("participants.id"))
    n_samples: Mapped[int] = mapped_column(Integer)
    envelope: Mapped[dict] = mapped_column(JSON)
    signature: Mapped[str] = mapped_column(String(200))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext_sha256: Mapped[str] = mapped_column(String(64), index=True)  # identical ciphertexts are refused
    idempotency_key: Mapped[str] = mapped_column(String(128))
    bytes_received: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    # the region whose aggregate carries this update (hierarchical aggregation); its ciphertext is then b"" here
    region: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Region(Base):
    """A region relay (e.g. a regional health authority) that sums its participants' ciphertexts; its key is pinned
    at enrollment like a participant's. `suspended` after a failed audit: its aggregates are refused."""

    __tablename__ = "regions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64))
    enrolled_at: Mapped[datetime] = mapped_column(default=utcnow)
    suspended: Mapped[str | None] = mapped_column(String(500), nullable=True)  # why, if suspended


class RegionAggregateRow(Base):
    """One aggregate a region forwarded: its signed statement, the participants' signed envelopes and the CKKS sum.
    state: audit (the cloud asked for the inputs) | accepted | refused (the audit failed)."""

    __tablename__ = "region_aggregates"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    region: Mapped[str] = mapped_column(ForeignKey("regions.id"))
    state: Mapped[str] = mapped_column(String(16))
    statement: Mapped[dict] = mapped_column(JSON)
    signature: Mapped[str] = mapped_column(String(200))
    members: Mapped[list] = mapped_column(JSON)  # [{"envelope", "signature"}] in participant order
    aggregate: Mapped[bytes] = mapped_column(LargeBinary)
    aggregate_sha256: Mapped[str] = mapped_column(String(64), index=True)
    bytes_received: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    reason: Mapped[str | None] = mapped_column(String(500), nullable=True)


class SecAggRound(Base):
    """A round's secure-aggregation sub-phase inside `collecting` (cloud.secagg) and who is still in it."""

    __tablename__ = "secagg_rounds"
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), primary_key=True)
    phase: Mapped[str] = mapped_column(String(16))  # advertise | share | input | consistency | unmask | ready
    phase_deadline_at: Mapped[datetime] = mapped_column()
    window_s: Mapped[float] = mapped_column(Float)  # how long a phase other than input waits for stragglers
    u1: Mapped[list | None] = mapped_column(JSON, nullable=True)  # advertised keys
    u2: Mapped[list | None] = mapped_column(JSON, nullable=True)  # sent their shares
    u3: Mapped[list | None] = mapped_column(JSON, nullable=True)  # masked input accepted
    u4: Mapped[list | None] = mapped_column(JSON, nullable=True)  # signed the view of U1, U2, U3
    closing: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # stragglers and refusals at input close


class SecAggMessage(Base):
    """One signed secure-aggregation message of a participant in a round (keys, shares, consistency, unmask)."""

    __tablename__ = "secagg_messages"
    __table_args__ = (UniqueConstraint("round_id", "participant", "phase"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    participant: Mapped[str] = mapped_column(ForeignKey("participants.id"))
    phase: Mapped[str] = mapped_column(String(16))
    doc: Mapped[dict] = mapped_column(JSON)
    signature: Mapped[str] = mapped_column(String(200))
    doc_sha256: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
