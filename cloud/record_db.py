"""What the cloud records around rounds (tables on `cloud.db.Base`, created by `cloud.engine.make_engine`): refusals,
privacy spends, alerts, intrusion locks, quarantined submissions, model versions, the audit log's events and
checkpoints, and settings."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Float, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from cloud.db import Base, utcnow


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
