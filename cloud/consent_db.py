"""The consent table (on `cloud.db.Base`, so `make_engine` creates it and `cloud.state_binding` commits its rows in
the log): every withdrawal and retention report a participant sent, by report id, with counts only."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from cloud.db import Base, utcnow


class ConsentReportRow(Base):
    """One participant's report: a withdrawal (a subject's pseudonym, what was deleted) or a retention deletion."""

    __tablename__ = "consent_reports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[str] = mapped_column(String(64), unique=True)
    participant: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # withdrawal | retention
    subject: Mapped[str | None] = mapped_column(String(64), nullable=True)  # HMAC pseudonym, never the id
    subject_kind: Mapped[str | None] = mapped_column(String(16), nullable=True)  # device | patient
    deleted: Mapped[dict] = mapped_column(JSON)
    reported_at: Mapped[float] = mapped_column(Float)  # the node's clock (unix s)
    at: Mapped[datetime] = mapped_column(default=utcnow)
