"""Secure aggregation at the cloud: the sub-phases of a collecting round (the messages that drive them are
`cloud.secagg_messages`'s) and the removal of the masks once the custodian has decrypted the masked sum
(`federation.secagg` holds the math; Bonawitz et al. CCS 2017 Fig. 4, SecAgg+ neighbour graphs of Bell et al. CCS 2020).

    collecting: advertise -> share -> input -> consistency -> unmask -> ready  => aggregating (contributors = U3)

* advertise: every expected participant posts X25519 keys and a self-mask commitment, signed by its enrolled
  identity; closes when all have (refusals and halted participants excepted) or at its deadline: U1.
* share: each member of U1 posts its shares, encrypted for exactly its neighbours in the round's graph: U2.
* input: members of U2 submit their masked, CKKS-encrypted updates (`cloud.submissions`); `cloud.rounds` closes
  the phase as it closed collection before (all of U2 answered, or the round's deadline; quorum): U3.
* consistency: members of U3 sign the view (U1 keys, U2, U3): U4, at least |U1| - floor(|U1|/3) of them.
* unmask: members of U4 post the shares the view calls for; the cloud checks each answer names exactly the owners
  it must (b-shares of surviving holders-of, s_sk-shares of dropped ones) and that every secret has t shares.

A phase other than input waits at most `window_s` (a tenth of the round's deadline, at least 10 s or a quarter of
it) after it starts; more than floor(|U1|/3) of U1 gone at any point fails the round (the participants would refuse
to unmask). Every accepted message is audited with its hash (`secagg.keys`, `secagg.shares`, `secagg.consistency`,
`secagg.unmask`), every phase change as `secagg.phase`, every refusal as `secagg.rejected` (or `access.denied`).

After decryption, `unmask` rebuilds the survivors' self-mask seeds and the dropped participants' mask keys from the
stored shares, removes their masks from the decrypted residues and returns the weighted sum FedAvg needs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.db import Participant, Round, SecAggMessage, SecAggRound, utcnow
from cloud.errors import Conflict
from cloud.participants import Participants
from cloud.record_db import Refusal
from cloud.round_states import transition
from cloud.store import Store, aware
from federation import ckks, secagg

log = logging.getLogger(__name__)
PHASES = ("advertise", "share", "input", "consistency", "unmask", "ready")  # in order; ready: all shares arrived
_NEXT = {"advertise": "share", "share": "input", "consistency": "unmask", "unmask": "ready"}


def phase_window(deadline_s: float) -> float:
    """How long advertise, share, consistency and unmask wait for stragglers."""
    return max(0.1 * deadline_s, min(10.0, deadline_s / 4))


def check_range(weighted_sum: np.ndarray, survivors: int) -> None:
    """Refuse an unmasked sum no `survivors` honest inputs can make. Each input is a quantised value of magnitude at
    most MAX_ABS_VALUE (`federation.secagg.quantise` refuses more), so the true sum lies within survivors x
    MAX_ABS_VALUE in every coordinate. A sum missing one survivor's masked input, holding one twice, or holding one
    from another round keeps masks that do not cancel: each coordinate is then uniform modulo 2^40, inside that range
    with probability at most 64 / 128 = 1/2, so all N_PARAMS coordinates pass with probability below 2^-N_PARAMS.
    (An added input that was never masked is not detected here: docs/threat-model.md, region relays.)"""
    bound = survivors * ckks.MAX_ABS_VALUE
    worst = float(np.max(np.abs(weighted_sum))) if np.size(weighted_sum) else 0.0
    if worst > bound:
        raise secagg.SecAggError(f"the unmasked sum is out of range ({worst:.4g} > {bound:g} for {survivors} inputs): "
                                 "masks did not cancel, so an input was dropped, repeated or altered after masking")


def messages_of(s: Session, round_id: int, phase: str | None = None) -> list[SecAggMessage]:
    """A round's stored secure-aggregation messages (of one phase), in participant order."""
    q = select(SecAggMessage).where(SecAggMessage.round_id == round_id)
    if phase is not None:
        q = q.where(SecAggMessage.phase == phase)
    return list(s.scalars(q.order_by(SecAggMessage.participant)))


class SecureAggregation:
    def __init__(self, store: Store, participants: Participants, *,
                 schedule_aggregation: Callable[[int], None]) -> None:
        self.store = store
        self.participants = participants
        self._schedule = schedule_aggregation
        self._rounds: dict[int, secagg.Round] = {}  # the graph of each round, once U1 is frozen
        self._lock = threading.Lock()

    # -- the round's parameters ---------------------------------------------------------------------------
    def params(self, s: Session, round_id: int, u1: list[str]) -> secagg.Round:
        with self._lock:
            cached = self._rounds.get(round_id)
        if cached is not None:
            return cached
        keys = {p.id: p.public_key for p in s.scalars(select(Participant).where(Participant.id.in_(u1)))}
        adverts = [{"participant": m.participant, "identity_key": keys[m.participant], "advert": m.doc,
                    "signature": m.signature} for m in messages_of(s, round_id, "advertise") if m.participant in u1]
        rnd = secagg.Round(round_id, secagg.verify_adverts(round_id, adverts))
        with self._lock:
            self._rounds[round_id] = rnd
            while len(self._rounds) > 8:
                self._rounds.pop(next(iter(self._rounds)))
        return rnd

    # -- hooks of the round's lifecycle (cloud.rounds, cloud.submissions, cloud.aggregation) -------------------
    def begin(self, s: Session, r: Round, *, deadline_s: float) -> None:
        """Open the advertise phase of a round that has just started collecting (in the opener's transaction)."""
        if len(r.expected) > secagg.MAX_PARTICIPANTS:
            raise Conflict(f"{len(r.expected)} participants expected; secure aggregation is proved for at most "
                           f"{secagg.MAX_PARTICIPANTS} per round")
        window = phase_window(deadline_s)
        deadline = min(utcnow() + timedelta(seconds=window), aware(r.deadline_at))
        s.add(SecAggRound(round_id=r.id, phase="advertise", phase_deadline_at=deadline, window_s=window))
        self.store.append(s, "secagg.phase", "cloud", round=r.id, phase="advertise", previous=None,
                          deadline_at=deadline.isoformat(), window_s=window)

    @staticmethod
    def phase(s: Session, round_id: int) -> str | None:
        sa = s.get(SecAggRound, round_id)
        return None if sa is None else sa.phase

    def accepting_inputs(self, s: Session, r: Round) -> bool:
        return self.phase(s, r.id) == "input"

    @staticmethod
    def input_expected(s: Session, r: Round) -> list[str]:
        """U2: who may submit a masked input (the round's `expected`, for the input phase)."""
        return list(s.get(SecAggRound, r.id).u2 or [])

    def check_input(self, s: Session, r: Round, participant: str) -> None:
        sa = s.get(SecAggRound, r.id)
        if sa is None or sa.phase != "input":
            raise Conflict(f"round {r.id} takes masked inputs in secure-aggregation phase input; it is in phase "
                           f"{sa.phase if sa else None}")
        if participant not in (sa.u2 or []):
            raise Conflict(f"participant {participant} sent no mask shares in round {r.id} (not in U2): its input "
                           "could not be unmasked")

    def close_inputs(self, s: Session, r: Round, *, accepted: list[str], stragglers: list[str],
                     refused: list[str]) -> None:
        """The input phase is over (cloud.rounds decided, quorum met): U3 = accepted; on to the consistency check."""
        sa = s.get(SecAggRound, r.id)
        sa.u3, sa.closing = sorted(accepted), {"stragglers": stragglers, "refused": refused}
        budget = secagg.dropout_budget(len(sa.u1))
        if len(sa.u1) - len(sa.u3) > budget:
            self._fail(s, r, f"secure aggregation: {len(sa.u1) - len(sa.u3)} of {len(sa.u1)} participants dropped "
                             f"after advertising keys; at most {budget} may")
            return
        self._enter(s, r, sa, "consistency", u3=sa.u3)

    def unmask(self, round_id: int, masked: np.ndarray) -> tuple[np.ndarray, dict]:
        """The weighted sum of the survivors' updates from the decrypted masked sum (residues modulo M)."""
        with self.store.read() as s:
            sa = s.get(SecAggRound, round_id)
            rnd = self.params(s, round_id, list(sa.u1))
            responses = {m.participant: m.doc for m in messages_of(s, round_id, "unmask")
                         if m.participant in (sa.u4 or [])}
            u2, u3 = list(sa.u2), list(sa.u3)
        total, summary = secagg.unmask_sum(masked, rnd=rnd, u2=u2, u3=u3, responses=responses)
        weighted = secagg.dequantise(total)
        check_range(weighted, len(u3))
        return weighted, summary

    # -- phases ---------------------------------------------------------------------------------------------
    def resume_after_restart(self) -> None:
        """Give phases whose deadline passed while the cloud was down one window from now: participants could not
        answer a cloud that was not there, so its downtime must not count against them (audited)."""
        now = utcnow()
        with self.store.tx() as s:
            for sa in s.scalars(select(SecAggRound).where(SecAggRound.phase.in_(tuple(_NEXT)))):
                r = s.get(Round, sa.round_id)
                if r is None or r.state != "collecting" or now <= aware(sa.phase_deadline_at) or sa.phase == "input":
                    continue
                previous_deadline = aware(sa.phase_deadline_at)
                sa.phase_deadline_at = now + timedelta(seconds=sa.window_s)
                self.store.append(s, "secagg.phase", "cloud", round=r.id, phase=sa.phase, previous=sa.phase,
                                  deadline_at=sa.phase_deadline_at.isoformat(), resumed_after_restart=True,
                                  missed_deadline_at=previous_deadline.isoformat())

    def tick(self) -> None:
        """Close phases whose deadline passed."""
        now = utcnow()
        with self.store.read() as s:
            due = [sa.round_id for sa in s.scalars(select(SecAggRound).where(SecAggRound.phase.in_(tuple(_NEXT))))
                   if now > aware(sa.phase_deadline_at)]
        for rid in due:
            self.advance(rid)

    def advance(self, round_id: int) -> None:
        """Close the current phase if everyone it waits for answered, or its deadline passed (repeatedly)."""
        ready = False
        with self.store.tx() as s:
            r = s.get(Round, round_id)
            sa = s.get(SecAggRound, round_id)
            if r is None or sa is None or r.state != "collecting":
                return
            while sa.phase in _NEXT and r.state == "collecting" and self._step(s, r, sa):
                pass
            ready = r.state == "aggregating"
        if ready:
            self._schedule(round_id)

    def _awaited(self, s: Session, r: Round, sa: SecAggRound) -> set[str]:
        halted = set(s.scalars(select(Participant.id).where(Participant.halted.is_(True))))
        refused = set(s.scalars(select(Refusal.participant).where(Refusal.round_id == r.id)))
        if sa.phase == "advertise":
            return set(r.expected) - halted - refused
        if sa.phase == "share":
            return set(sa.u1) - halted - refused
        return set(sa.u3 if sa.phase == "consistency" else sa.u4)

    def _step(self, s: Session, r: Round, sa: SecAggRound) -> bool:
        answered = set(s.scalars(select(SecAggMessage.participant).where(SecAggMessage.round_id == r.id,
                                                                          SecAggMessage.phase == sa.phase)))
        if not (self._awaited(s, r, sa) <= answered or utcnow() > aware(sa.phase_deadline_at)):
            return False
        n1 = len(sa.u1) if sa.u1 is not None else len(answered)
        if sa.phase == "advertise":
            u1 = sorted(answered)
            if len(u1) < max(2, r.quorum):
                return self._fail(s, r, f"secure aggregation: {len(u1)} participant(s) advertised keys, quorum "
                                        f"{r.quorum}")
            sa.u1 = u1
            rnd = self.params(s, r.id, u1)
            return self._enter(s, r, sa, "share", u1=u1, degree=secagg.degree(len(u1)), threshold=rnd.t,
                               dropout_budget=rnd.d)
        budget = secagg.dropout_budget(n1)
        if sa.phase == "share":
            u2 = sorted(answered & set(sa.u1))
            if n1 - len(u2) > budget or len(u2) < r.quorum:
                return self._fail(s, r, f"secure aggregation: {len(u2)} of {n1} participants shared their mask "
                                        f"seeds; at most {budget} may drop and the quorum is {r.quorum}")
            sa.u2 = u2
            return self._enter(s, r, sa, "input", u2=u2)
        if sa.phase == "consistency":
            u4 = sorted(answered & set(sa.u3))
            if len(u4) < secagg.min_survivors(n1):
                return self._fail(s, r, f"secure aggregation: {len(u4)} participants signed the round's view, "
                                        f"{secagg.min_survivors(n1)} needed")
            sa.u4 = u4
            return self._enter(s, r, sa, "unmask", u4=u4)
        # unmask: every secret the view calls for needs t shares from the holders who answered
        rnd = self.params(s, r.id, list(sa.u1))
        responders = answered & set(sa.u4)
        short = [o for o in sa.u3 if len(set(rnd.holders(o)) & responders) < rnd.t]
        short += [o for o in sorted(set(sa.u2) - set(sa.u3)) if len(set(rnd.graph[o]) & responders) < rnd.t]
        if short:
            return self._fail(s, r, f"secure aggregation: fewer than {rnd.t} shares arrived for the masks of "
                                    f"{short}")
        self._enter(s, r, sa, "ready", responders=sorted(responders))
        r.contributors = list(sa.u3)
        closing = sa.closing or {}
        transition(self.store, s, r, "aggregating", contributors=r.contributors,
                   stragglers=closing.get("stragglers", []), refused=closing.get("refused", []))
        return True

    def _enter(self, s: Session, r: Round, sa: SecAggRound, phase: str, **detail: object) -> bool:
        previous, sa.phase = sa.phase, phase
        if phase == "input":
            deadline: datetime = aware(r.deadline_at)
        else:
            deadline = utcnow() + timedelta(seconds=sa.window_s)
            if phase == "share":
                deadline = min(deadline, aware(r.deadline_at))
        sa.phase_deadline_at = deadline
        self.store.append(s, "secagg.phase", "cloud", round=r.id, phase=phase, previous=previous,
                          deadline_at=deadline.isoformat(), **detail)
        return True

    def _fail(self, s: Session, r: Round, reason: str) -> bool:
        r.failure_reason, r.closed_at = reason[:500], utcnow()
        transition(self.store, s, r, "failed", reason=r.failure_reason)
        log.warning("round %s failed: %s", r.id, reason)
        return True
