"""The round state machine, shared by the units that move a round on (rounds, aggregation, promotion).

open -> collecting -> aggregating -> decrypting -> completed (a candidate model is registered) -> evaluated (a data
scientist posted held-out metrics) -> staged (a compliance officer approved it, gates passed) -> promoted (an
operator or admin who did not open the round) -> rolled_back; completed/evaluated/staged -> rejected;
open..decrypting -> failed (with a reason). Every transition is audited as ``round.state``.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.db import Round, SecAggRound
from cloud.errors import Conflict, NotFound
from cloud.record_db import ModelVersion
from cloud.store import Store, aware
from federation.responses import RoundView

OPEN_STATES = ("open", "collecting")
TRANSITIONS: dict[str, frozenset[str]] = {
    "open": frozenset({"collecting", "failed"}),
    "collecting": frozenset({"aggregating", "failed"}),
    "aggregating": frozenset({"decrypting", "failed"}),
    "decrypting": frozenset({"completed", "failed"}),
    "completed": frozenset({"evaluated", "rejected"}),
    "evaluated": frozenset({"evaluated", "staged", "rejected"}),
    "staged": frozenset({"promoted", "rejected"}),
    "promoted": frozenset({"rolled_back"}),
}


def transition(store: Store, s: Session, r: Round, state: str, actor: str = "cloud", **detail: object) -> None:
    if state not in TRANSITIONS.get(r.state, frozenset()):
        raise Conflict(f"round {r.id} is {r.state}; it cannot become {state}")
    prev, r.state = r.state, state
    store.append(s, "round.state", actor, round=r.id, state=state, previous=prev, **detail)


def get_round(s: Session, round_id: int) -> Round:
    r = s.get(Round, round_id)
    if r is None:
        raise NotFound(f"round {round_id} does not exist")
    return r


def round_model(s: Session, round_id: int) -> ModelVersion | None:
    return s.scalar(select(ModelVersion).where(ModelVersion.round_id == round_id))


def round_view(s: Session, r: Round, *, progress: dict | None = None) -> RoundView:
    m = round_model(s, r.id)
    return RoundView(round=r.id, state=r.state, quorum=r.quorum, expected=r.expected,
                     base_model_version=r.base_model_version, local_epochs=r.local_epochs, data_cutoff=r.data_cutoff,
                     deadline_at=aware(r.deadline_at).isoformat(), opened_by=r.opened_by, contributors=r.contributors,
                     result_model_version=r.result_model_version, failure_reason=r.failure_reason,
                     evaluated_by=r.evaluated_by, approved_by=r.approved_by, decided_by=r.decided_by,
                     model_status=m.status if m else None, metrics=m.metrics if m else None, progress=progress,
                     secagg_phase=_secagg_phase(s, r))


def _secagg_phase(s: Session, r: Round) -> str | None:
    sa = s.get(SecAggRound, r.id) if r.state == "collecting" else None
    return None if sa is None else sa.phase
