"""Governance tables (on `cloud.db.Base`, so `make_engine` creates them): evaluations per source, gate checks,
drift reports and the training-distribution baselines drift is measured against."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Float, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from cloud.db import Base, utcnow


class Evaluation(Base):
    """One source's scores of one model version: `reporter` is a user (posted), a participant (federated) or
    "cloud" (validation)."""

    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("model_version", "source", "reporter"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version: Mapped[int] = mapped_column(Integer, index=True)
    source: Mapped[str] = mapped_column(String(16))
    reporter: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict] = mapped_column(JSON)
    signature: Mapped[str | None] = mapped_column(String(200), nullable=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class GateCheck(Base):
    """The result of every gate at one approval or promotion attempt (passing or not)."""

    __tablename__ = "gate_checks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version: Mapped[int] = mapped_column(Integer, index=True)
    action: Mapped[str] = mapped_column(String(16))  # approve | promote
    actor: Mapped[str] = mapped_column(String(64))
    passed: Mapped[bool] = mapped_column()
    results: Mapped[list] = mapped_column(JSON)
    config: Mapped[dict] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class DriftReportRow(Base):
    """A gateway's histogram of recent privatised telemetry, with the KL divergence the cloud computed."""

    __tablename__ = "drift_reports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant: Mapped[str] = mapped_column(String(64), index=True)
    report_id: Mapped[str] = mapped_column(String(64), unique=True)
    t_start: Mapped[float] = mapped_column(Float)
    t_end: Mapped[float] = mapped_column(Float)
    counts: Mapped[list] = mapped_column(JSON)
    n: Mapped[int] = mapped_column(Integer)
    reference_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    kl: Mapped[float | None] = mapped_column(Float, nullable=True)
    alert: Mapped[bool] = mapped_column(default=False)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class DriftBaseline(Base):
    """The pooled telemetry histogram of a round's contributors when its model was registered."""

    __tablename__ = "drift_baselines"
    round_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    counts: Mapped[list] = mapped_column(JSON)
    n: Mapped[int] = mapped_column(Integer)
    participants: Mapped[list] = mapped_column(JSON)
    windows: Mapped[list] = mapped_column(JSON, default=list)  # distinct [t_start, t_end] of the pooled reports


class PendingAction(Base):
    """A two-person action (`cloud.approvals`): requested by one user, carried out only when a different user with
    the approver role approves it. `params` hold no secrets (tokens only as SHA-256)."""

    __tablename__ = "pending_actions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    action: Mapped[str] = mapped_column(String(48), index=True)
    params: Mapped[dict] = mapped_column(JSON)
    requested_by: Mapped[str] = mapped_column(String(64))
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)  # pending|approved|rejected|expired
    decided_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(nullable=True)
    reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    result: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class ModelExplanationRow(Base):
    """Attributions of one model version's forecasts on the cloud's validation cohort (`cloud.explanations`): JSON
    bytes, so the state binding logs their SHA-256 rather than the whole document."""

    __tablename__ = "model_explanations"
    model_version: Mapped[int] = mapped_column(Integer, primary_key=True)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow)
