"""Intrusion response tables (on `cloud.db.Base`, so `make_engine` creates them and `cloud.state_binding` commits
their rows in the log): reports nodes sent of what they contained, and each participant's last witnessed checkpoint."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from cloud.db import Base, utcnow


class NodeIntrusionReport(Base):
    """A node's signed report of a containment it carried out (e.g. a device's broker login revoked)."""

    __tablename__ = "node_intrusion_reports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[str] = mapped_column(String(64), unique=True)
    participant: Mapped[str] = mapped_column(String(64), index=True)
    rule: Mapped[str] = mapped_column(String(48))
    subject: Mapped[str] = mapped_column(String(256))
    detail: Mapped[dict] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class WitnessAck(Base):
    """A participant's last acknowledged check of the log (the checkpoint it verified), and whether it was flagged
    stale since (one alert per lapse)."""

    __tablename__ = "witness_acks"
    participant: Mapped[str] = mapped_column(String(64), primary_key=True)
    tree_size: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: never acknowledged
    root_hex: Mapped[str | None] = mapped_column(String(64), nullable=True)
    acked_at: Mapped[datetime | None] = mapped_column(nullable=True)  # the cloud's clock at receipt
    stale_alerted_at: Mapped[datetime | None] = mapped_column(nullable=True)
