"""Rounds: opening, what participants and staff see of them, and closing the input phase of collection (everyone
who shared mask seeds answered, or the deadline passed). A round with its quorum goes on through secure
aggregation's consistency check and unmasking (`cloud.secagg`) to the aggregation worker (`cloud.aggregation`);
without it, the round fails with the reason."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, defer

from cloud.db import Participant, Round, Update, utcnow
from cloud.errors import Conflict, NotFound
from cloud.record_db import IntrusionLock, Refusal
from cloud.registry import Registry
from cloud.round_states import OPEN_STATES, get_round, round_view, transition
from cloud.secagg import SecureAggregation
from cloud.store import Store, aware
from federation.errors import ConfigError
from federation.limits import MIN_CONTRIBUTORS_FLOOR
from federation.responses import PublicRound, RefusalRecord, RoundReport, RoundView, UpdateRecord
from federation.wire import OpenRound

log = logging.getLogger(__name__)


class Rounds:
    def __init__(self, store: Store, *, secagg: SecureAggregation, min_contributors: int,
                 progress: Callable[[int], dict | None] = lambda _rid: None) -> None:
        if min_contributors < MIN_CONTRIBUTORS_FLOOR:
            raise ConfigError(f"min_contributors must be at least {MIN_CONTRIBUTORS_FLOOR}, got {min_contributors}")
        self.store = store
        self.min_contributors = min_contributors  # fixed by the cloud's configuration, not by whoever opens a round
        self.secagg = secagg  # the sub-phases of collecting; it hands an unmaskable round to the aggregation worker
        self._progress = progress

    def open(self, req: OpenRound, *, actor: str) -> RoundView:
        with self.store.refusals("round.rejected", actor, action="round.open"), self.store.tx() as s:
            if req.quorum < self.min_contributors:
                raise Conflict(f"quorum {req.quorum} is below this federation's minimum of {self.min_contributors} "
                               "distinct contributors (cloud serve --min-contributors)")
            busy = s.scalar(select(Round).where(Round.state.in_(OPEN_STATES)))
            if busy is not None:
                raise Conflict(f"round {busy.id} is still {busy.state}")
            everyone = list(s.scalars(select(Participant).order_by(Participant.id)))
            locked = set(s.scalars(select(IntrusionLock.key).where(IntrusionLock.key_kind == "participant",
                                                                   IntrusionLock.lifted_by.is_(None))))
            expected = [p.id for p in everyone if not p.halted and p.id not in locked]
            halted = [p.id for p in everyone if p.halted]
            if len(expected) < req.quorum:
                raise Conflict(f"quorum {req.quorum} exceeds the {len(expected)} enrolled participants "
                               f"within their privacy budget (halted: {halted})"
                               + (f" and not locked (locked: {sorted(locked)})" if locked else ""))
            base = Registry.promoted(s).version
            rnd = Round(state="open", quorum=req.quorum, expected=expected, base_model_version=base,
                        local_epochs=req.local_epochs, data_cutoff=req.data_cutoff, opened_by=actor,
                        deadline_at=utcnow() + timedelta(seconds=req.deadline_s))
            s.add(rnd)
            s.flush()
            self.store.append(s, "round.opened", actor, round=rnd.id, quorum=req.quorum, expected=expected,
                              excluded_at_cap=halted, base_model_version=base, deadline_s=req.deadline_s,
                              **({"excluded_locked": sorted(locked)} if locked else {}))
            transition(self.store, s, rnd, "collecting", actor)
            self.secagg.begin(s, rnd, deadline_s=req.deadline_s)
            return round_view(s, rnd)

    def current(self, *, participant: str | None = None, staff: bool = False) -> PublicRound:
        """What participants need to answer the newest round: no staff names, no metrics. Who is expected is shown to
        staff and enrolled participants (signed reads: a round's members, who mask with each other), not to anyone."""
        with self.store.read() as s:
            r = s.scalar(select(Round).order_by(Round.id.desc()).limit(1))
            if r is None:
                raise NotFound("no round has been opened yet")
            view = round_view(s, r).model_dump(include=set(PublicRound.model_fields))
        if not (staff or participant):
            view["expected"] = []
        return PublicRound.model_validate(view)

    def view(self, s: Session, round_id: int) -> RoundView:
        return round_view(s, get_round(s, round_id), progress=self._progress(round_id))

    def report(self, round_id: int) -> RoundReport:
        with self.store.read() as s:
            view = self.view(s, round_id)
            ups = s.scalars(select(Update).where(Update.round_id == round_id).order_by(Update.participant)
                            .options(defer(Update.ciphertext))).all()  # the report never needs the ciphertexts
            refs = s.scalars(select(Refusal).where(Refusal.round_id == round_id)).all()
            return RoundReport(**view.model_dump(),
                               updates=[UpdateRecord(participant=u.participant, n_samples=u.n_samples,
                                                     dp=u.envelope["dp"], bytes=u.bytes_received,
                                                     ciphertext_sha256=u.ciphertext_sha256) for u in ups],
                               refusals=[RefusalRecord(participant=x.participant, reason=x.reason) for x in refs])

    @staticmethod
    def collecting(s: Session, round_id: int, *, arrived: datetime | None = None) -> Round:
        """The round, if it is collecting and `arrived` (default: now) is before its deadline."""
        r = get_round(s, round_id)
        if r.state != "collecting":
            raise Conflict(f"round {round_id} is not collecting (state: {r.state}); the submission is late")
        if (arrived or utcnow()) > aware(r.deadline_at):
            raise Conflict(f"round {round_id} passed its deadline; the submission is late")
        return r

    def maybe_close(self, round_id: int, *, deadline_passed: bool = False) -> None:
        """Close the input phase once every participant of U2 answered (or at the deadline): on to unmasking, or fail.
        Secure aggregation's other phases are closed by `cloud.secagg`."""
        with self.store.tx() as s:
            r = s.get(Round, round_id)
            if r is None or r.state != "collecting":
                return
            inputs = self.secagg.accepting_inputs(s, r)
        if not inputs:
            self.secagg.advance(round_id)
            return
        with self.store.tx() as s:
            r = s.get(Round, round_id)
            if r is None or r.state != "collecting" or not self.secagg.accepting_inputs(s, r):
                return
            expected = self.secagg.input_expected(s, r)
            accepted = sorted(s.scalars(select(Update.participant).where(Update.round_id == round_id)))
            refused = [x.participant for x in s.scalars(select(Refusal).where(Refusal.round_id == round_id))]
            # a participant halted at its privacy cap during the round will not answer: don't wait for it
            halted = {p.id for p in s.scalars(select(Participant).where(Participant.halted.is_(True)))}
            everyone = set(accepted) | set(refused) | halted >= set(expected)
            if not (everyone or deadline_passed):
                return
            stragglers = sorted(set(r.expected) - set(accepted) - set(refused))
            r.closed_at = utcnow()
            if len(accepted) < r.quorum:
                r.failure_reason = f"quorum not met: {len(accepted)} accepted updates, quorum {r.quorum}"
                transition(self.store, s, r, "failed", reason=r.failure_reason, stragglers=stragglers)
                log.warning("round %s failed: %s", round_id, r.failure_reason)
                return
            self.secagg.close_inputs(s, r, accepted=accepted, stragglers=stragglers, refused=sorted(refused))

    def tick(self) -> None:
        """Close rounds whose deadline has passed."""
        with self.store.read() as s:
            due = [r.id for r in s.scalars(select(Round).where(Round.state == "collecting"))
                   if utcnow() > aware(r.deadline_at)]
        for rid in due:
            self.maybe_close(rid, deadline_passed=True)

    def unclosed(self) -> list[int]:
        """Rounds still collecting (a crash may have left one whose participants have all answered)."""
        with self.store.read() as s:
            return list(s.scalars(select(Round.id).where(Round.state == "collecting")))
