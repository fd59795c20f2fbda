"""Reading the ledgers: audit entries, the latest signed checkpoint and inclusion proofs (RFC 9162, `cloud.audit`),
the privacy ledger per participant, and compliance alerts."""

from __future__ import annotations

from sqlalchemy import select

from cloud.db import Participant
from cloud.log_proofs import LogProofs
from cloud.participants import Participants
from cloud.record_db import Alert, Event, PrivacySpend
from cloud.store import Store, aware
from federation.responses import (
    AlertView,
    AuditEntry,
    CheckpointView,
    InclusionProof,
    PrivacyAccount,
    PrivacySpendView,
)


class Ledgers:
    def __init__(self, store: Store, participants: Participants, *, log: LogProofs | None = None) -> None:
        self.store = store
        self.participants = participants
        self.log = log or LogProofs(store)

    def audit_entries(self, *, start: int = 0, limit: int = 1000) -> list[AuditEntry]:
        with self.store.read() as s:
            rows = s.scalars(select(Event).where(Event.seq >= start).order_by(Event.seq).limit(limit))
            return [AuditEntry(seq=e.seq, at=e.at, kind=e.kind, actor=e.actor, detail=e.detail, rows=e.state_rows)
                    for e in rows]

    def latest_checkpoint(self) -> CheckpointView:
        return self.log.checkpoint()

    def inclusion(self, seq: int) -> InclusionProof:
        size, root, path = self.log.inclusion(seq)
        return InclusionProof(seq=seq, tree_size=size, root=root.hex(), proof=[h.hex() for h in path])

    def privacy(self) -> list[PrivacyAccount]:
        with self.store.read() as s:
            out = []
            for p in s.scalars(select(Participant).order_by(Participant.id)):
                rows = s.scalars(select(PrivacySpend).where(PrivacySpend.participant == p.id)
                                 .order_by(PrivacySpend.id)).all()
                out.append(PrivacyAccount(
                    participant=p.id, cap=self.participants.cap(p), halted=p.halted,
                    epsilon_spent=rows[-1].epsilon_recomputed if rows else 0.0, unit="window",
                    entries=[PrivacySpendView(round=x.round_id, epsilon_recomputed=x.epsilon_recomputed,
                                              epsilon_declared=x.epsilon_declared, epsilon_round=x.epsilon_round,
                                              delta=x.delta, accountant=x.accountant, steps=len(x.history))
                             for x in rows]))
            return out

    def alerts(self) -> list[AlertView]:
        with self.store.read() as s:
            return [AlertView(id=a.id, kind=a.kind, participant=a.participant, detail=a.detail,
                              at=aware(a.at).isoformat()) for a in s.scalars(select(Alert).order_by(Alert.id))]
