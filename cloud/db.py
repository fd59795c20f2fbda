"""Cloud state in SQLAlchemy 2: SQLite file by default, PostgreSQL by URL (WEARFED_DB_URL).

Every table the aggregator needs to resume a round after a `kill -9` lives here: the round row carries the
stored aggregate, so aggregation and decryption can be redone from the database alone.
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
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker


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
    ciphertext_sha256: Mapped[str] = mapped_column(String(64))
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


class Refusal(Base):
    __tablename__ = "refusals"
    __table_args__ = (UniqueConstraint("round_id", "participant"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    participant: Mapped[str] = mapped_column(ForeignKey("participants.id"))
    reason: Mapped[str] = mapped_column(String(500))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class PrivacySpend(Base):
    """The privacy ledger: one row per accepted update, with the epsilon the cloud recomputed."""

    __tablename__ = "privacy_ledger"
    __table_args__ = (UniqueConstraint("round_id", "participant"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    participant: Mapped[str] = mapped_column(ForeignKey("participants.id"), index=True)
    history: Mapped[list] = mapped_column(JSON)
    accountant: Mapped[str] = mapped_column(String(8))
    delta: Mapped[float] = mapped_column(Float)
    epsilon_declared: Mapped[float] = mapped_column(Float)
    epsilon_recomputed: Mapped[float] = mapped_column(Float)
    epsilon_round: Mapped[float] = mapped_column(Float)
    cap: Mapped[float | None] = mapped_column(Float, nullable=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class Alert(Base):
    """Compliance alerts (privacy budget reached or exceeded)."""

    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(48))
    participant: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[dict] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class IntrusionLock(Base):
    """Containment by intrusion response (cloud.intrusion): a locked address, bearer token or participant."""

    __tablename__ = "intrusion_locks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_kind: Mapped[str] = mapped_column(String(16))  # address | token | participant | user
    key: Mapped[str] = mapped_column(String(128), index=True)
    rule: Mapped[str] = mapped_column(String(48))
    detail: Mapped[dict] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    until: Mapped[datetime | None] = mapped_column(nullable=True)  # None: until lifted (two-person rule)
    lifted_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Quarantine(Base):
    """An update held back by intrusion response: never aggregated, kept (hash and envelope) as evidence."""

    __tablename__ = "quarantine"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(Integer, index=True)
    participant: Mapped[str] = mapped_column(String(64))
    ciphertext_sha256: Mapped[str] = mapped_column(String(64))
    envelope: Mapped[dict] = mapped_column(JSON)
    rule: Mapped[str] = mapped_column(String(48))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    __tablename__ = "models"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int | None] = mapped_column(Integer, nullable=True, unique=True)
    architecture: Mapped[str] = mapped_column(String(64))
    weights: Mapped[bytes] = mapped_column(LargeBinary)
    hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column()
    participants: Mapped[list] = mapped_column(JSON, default=list)
    n_samples: Mapped[int] = mapped_column(Integer, default=0)
    # candidate | promoted | retired (replaced by a later promotion) | rejected | rolled_back
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    metrics: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    privacy: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # participant -> recomputed epsilon
    replaced_version: Mapped[int | None] = mapped_column(Integer, nullable=True)  # what its promotion replaced


class Event(Base):
    """The audit ledger: entry `seq` (0-based) is leaf `seq` of the RFC 9162 Merkle tree (cloud.audit)."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True, index=True)
    at: Mapped[str] = mapped_column(String(40))  # ISO-8601 UTC, exactly as hashed into the leaf
    kind: Mapped[str] = mapped_column(String(48), index=True)
    actor: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict] = mapped_column(JSON)
    # the state rows this entry commits (cloud.state_binding); hashed into the leaf only when present
    state_rows: Mapped[list | None] = mapped_column(JSON, nullable=True)


class CheckpointRow(Base):
    """A signed checkpoint (tree head) of the audit ledger, plus the right-edge subtree roots to extend it."""

    __tablename__ = "checkpoints"
    tree_size: Mapped[int] = mapped_column(Integer, primary_key=True)
    body: Mapped[str] = mapped_column(Text)  # C2SP tlog-checkpoint text
    signature: Mapped[str] = mapped_column(String(100))  # base64 Ed25519
    frontier: Mapped[list] = mapped_column(JSON)  # hex roots of the perfect subtrees, largest first
    at: Mapped[datetime] = mapped_column(default=utcnow)


class Setting(Base):
    """Small key/value facts about this deployment (e.g. the audit log's public key)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record) -> None:  # noqa: ANN001
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    else:
        engine = create_engine(url, pool_pre_ping=True)
    from cloud.pg_locks import schema_lock  # replicas starting at once create the tables once

    with schema_lock(engine):
        Base.metadata.create_all(engine)
        _add_missing_columns(engine)
    return engine


def _add_missing_columns(engine: Engine) -> None:
    """Additive migration of a database made by an older version: nullable columns added since (``events.state_rows``,
    the state binding; ``updates.region``, hierarchical aggregation); `create_all` creates missing tables but never
    columns."""
    for table, column, kind in (("events", "state_rows", JSON()), ("updates", "region", String(64))):
        if column not in {c["name"] for c in inspect(engine).get_columns(table)}:
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} " + kind.compile(dialect=engine.dialect)))


def make_sessionmaker(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
