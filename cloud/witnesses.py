"""Which participant last checked the audit log, and when: witness acknowledgements, and the rule on nodes that
submit updates without checking.

A node's witness (`gateway.witness`) verifies the newest signed checkpoint and a consistency proof from the last one
it kept, then acknowledges what it verified: ``POST /v1/log/witness`` with {participant, tree_size, root,
checked_at}, signed by its enrolled key (`federation.node_signals.WITNESS_DOMAIN`). The cloud accepts it only if
this log issued a checkpoint of that size with that root (else 409, audited, and a compliance alert
``intrusion.witness_mismatch``: the node saw another history, or signs what it did not see), then keeps the newest
per participant (`witness_acks`, audited as ``witness.acknowledged``).

Rule ``witness_stale`` (thresholds in `cloud.intrusion.IntrusionConfig`): an update whose signed envelope verifies,
from a participant that never acknowledged a checkpoint, or whose last acknowledgement is older than
`witness_max_age_s` (the cloud's clock at receipt) or `witness_max_behind` checkpoints behind the log's newest,
raises one compliance alert per lapse (``intrusion.witness_stale``, audited as ``intrusion.detected``); with
`witness_hold` the update is also refused (409, audited as ``update.held``) until the participant acknowledges a
checkpoint again. An honest node checks, and acknowledges, right before it answers a round; a hospital pool's nodes
acknowledge together (``POST /v1/log/witness/batch``, `cloud.batches`). What this cannot tell:
whether a node that acknowledges actually verified the proof (a node may sign what it did not check); it tells only
that a node stopped saying so.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from cloud import batches
from cloud.batches import Signed
from cloud.db import Participant, Update, utcnow
from cloud.errors import CloudError, Conflict
from cloud.intrusion_config import IntrusionConfig
from cloud.intrusion_db import WitnessAck
from cloud.participants import Participants
from cloud.record_db import Alert, CheckpointRow
from cloud.store import Store, aware
from federation.checkpoint import Checkpoint
from federation.errors import SignatureError
from federation.limits import MAX_BATCH
from federation.node_signals import WITNESS_DOMAIN
from federation.responses import WitnessAckResult, WitnessAckResults
from federation.signing import verify
from federation.wire import PARTICIPANT_ID, RegionAggregate, Submission, UpdateEnvelope

log = logging.getLogger(__name__)


class WitnessAckBody(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    participant: str = Field(pattern=PARTICIPANT_ID, max_length=64)
    tree_size: int = Field(ge=1, le=2**31 - 1)
    root: str = Field(pattern=r"^[0-9a-f]{64}$")
    checked_at: float = Field(ge=0, le=4_102_444_800)  # the node's clock (unix s)
    signature: str = Field(max_length=200)

    def signed_doc(self) -> dict:
        return self.model_dump(mode="json", exclude={"signature"})


class WitnessAckView(BaseModel):
    participant: str
    tree_size: int
    behind: int  # checkpoints the log grew since the acknowledged one


class WitnessAckBatch(BaseModel):
    """Several nodes' signed acknowledgements in one request (a hospital pool's)."""

    model_config = ConfigDict(extra="forbid")
    acks: list[WitnessAckBody] = Field(min_length=1, max_length=MAX_BATCH)


class Witnesses:
    def __init__(self, store: Store, participants: Participants, cfg: IntrusionConfig) -> None:
        self.store = store
        self.participants = participants
        self.cfg = cfg

    @staticmethod
    def _log_size(s) -> int:  # noqa: ANN001 - a Session
        return int(s.scalar(select(func.max(CheckpointRow.tree_size))) or 0)

    def acknowledge(self, ack: WitnessAckBody) -> WitnessAckView:
        with self.store.refusals("witness.rejected", ack.participant, tree_size=ack.tree_size):
            with self.store.tx() as s:
                self.participants.verified(s, ack.participant, ack.signed_doc(), ack.signature, domain=WITNESS_DOMAIN)
                view, mismatch = self._check(s, ack)
            if mismatch is not None:  # raised after the commit: the evidence stays
                raise mismatch
            return view

    def acknowledge_batch(self, batch: WitnessAckBatch) -> WitnessAckResults:
        """Several nodes' acknowledgements (a pool's): every signature first (`cloud.batches`), then each as if alone,
        in one transaction."""
        signed = [Signed(a.participant, a.signed_doc(), a.signature, "witness.acknowledge", {"tree_size": a.tree_size})
                  for a in batch.acks]
        batches.authenticate(self.store, self.participants, signed, domain=WITNESS_DOMAIN, kind="witness.rejected")
        results = []
        with self.store.tx() as s:
            for ack in batch.acks:
                try:
                    with self.store.refusals("witness.rejected", ack.participant, session=s, tree_size=ack.tree_size):
                        view, mismatch = self._check(s, ack)
                        if mismatch is not None:
                            raise mismatch
                except CloudError as exc:
                    results.append(WitnessAckResult(participant=ack.participant, status=exc.status, detail=exc.reason))
                else:
                    results.append(WitnessAckResult(participant=ack.participant, status=200, tree_size=view.tree_size,
                                                    behind=view.behind))
        return WitnessAckResults(results=results)

    def _check(self, s, ack: WitnessAckBody) -> tuple[WitnessAckView | None, Conflict | None]:  # noqa: ANN001
        """Keep an acknowledgement of a checkpoint this log issued; for any other, write the evidence (an alert and an
        audit entry) in `s` and return the refusal to raise once it is committed."""
        pid = ack.participant
        row = s.get(CheckpointRow, ack.tree_size)
        ours = Checkpoint.from_body(row.body.encode()).root_hash.hex() if row is not None else None
        if ours == ack.root:
            size = self._record(s, ack)
            return WitnessAckView(participant=pid, tree_size=size, behind=self._log_size(s) - size), None
        detail = {"rule": "witness_mismatch", "participant": pid, "tree_size": ack.tree_size,
                  "acknowledged_root": ack.root, "log_root": ours}
        s.add(Alert(kind="intrusion.witness_mismatch", participant=pid, detail=detail))
        self.store.append(s, "intrusion.detected", "cloud", **detail)
        log.critical("participant %s acknowledged a checkpoint of %d entries this log never issued: %s", pid,
                     ack.tree_size, detail)
        return None, Conflict(f"this log issued no checkpoint of {ack.tree_size} entries with root {ack.root}"
                              if ours else f"this log has no checkpoint of {ack.tree_size} entries")

    def _record(self, s, ack: WitnessAckBody) -> int:  # noqa: ANN001 - a Session
        """Keep `ack` as the participant's newest (a late, older one changes nothing); the size now kept."""
        w = s.get(WitnessAck, ack.participant)
        if w is None:
            w = WitnessAck(participant=ack.participant)
            s.add(w)
        if w.tree_size is None or ack.tree_size >= w.tree_size:
            w.tree_size, w.root_hex, w.acked_at, w.stale_alerted_at = ack.tree_size, ack.root, utcnow(), None
            self.store.append(s, "witness.acknowledged", ack.participant, tree_size=ack.tree_size, root=ack.root)
        return int(w.tree_size)

    def before_update(self, round_id: int, sub: Submission) -> None:
        """Apply the witness_stale rule to an update about to be submitted (never raises on a bad submission: the
        submission's own checks refuse it, and signal it, once)."""
        self.before_envelope(round_id, sub.envelope, sub.signature)

    def before_aggregate(self, round_id: int, agg: RegionAggregate) -> None:
        """The same rule for every update a region relay forwards: with `witness_hold`, one lapsed member holds the
        aggregate (taken whole or not at all), and the answer names it."""
        for m in agg.members:
            self.before_envelope(round_id, m.envelope, m.signature)

    def before_envelope(self, round_id: int, env: UpdateEnvelope, signature: str) -> None:
        if not self.cfg.witness_rule:
            return
        pid = env.participant
        with self.store.read() as s:
            p = s.get(Participant, pid)
            if p is None:
                return
            try:  # only the participant itself can make its lapse visible: a forger's update says nothing about it
                verify(p.public_key, env.model_dump(mode="json"), signature)
            except SignatureError:
                return
            if s.scalar(select(Update.id).where(Update.round_id == round_id, Update.participant == pid)) is not None:
                return  # a resend of an update already in: not a new submission
            why = self._stale(s.get(WitnessAck, pid), self._log_size(s))
        if why is None:
            return
        self._alert(pid, round_id, why)
        if self.cfg.witness_hold:
            with self.store.refusals("update.held", pid, round=round_id, rule="witness_stale"):
                raise Conflict(f"update held by intrusion response (witness_stale): {why}; check the cloud's "
                               "checkpoints (the node's log witness) and send it again")

    def _stale(self, w: WitnessAck | None, log_size: int) -> str | None:
        if w is None or w.tree_size is None or w.acked_at is None:
            return "it never acknowledged a checkpoint of the audit log"
        age = (utcnow() - aware(w.acked_at)).total_seconds()
        behind = log_size - w.tree_size
        if self.cfg.witness_max_age_s and age > self.cfg.witness_max_age_s:
            return (f"its last checkpoint check ({w.tree_size} entries) was {age:.0f} s ago, more than "
                    f"{self.cfg.witness_max_age_s:g} s")
        if self.cfg.witness_max_behind and behind > self.cfg.witness_max_behind:
            return (f"its last checked checkpoint ({w.tree_size} entries) is {behind} checkpoints behind the log, more "
                    f"than {self.cfg.witness_max_behind}")
        return None

    def _alert(self, pid: str, round_id: int, why: str) -> None:
        """One alert per lapse: none again until the participant acknowledges a checkpoint."""
        with self.store.tx() as s:
            w = s.get(WitnessAck, pid)
            if w is None:
                w = WitnessAck(participant=pid)
                s.add(w)
            elif w.stale_alerted_at is not None:
                return
            w.stale_alerted_at = utcnow()
            info = {"rule": "witness_stale", "participant": pid, "round": round_id, "reason": why,
                    "last_tree_size": w.tree_size, "held": self.cfg.witness_hold,
                    "max_age_s": self.cfg.witness_max_age_s, "max_behind": self.cfg.witness_max_behind}
            s.add(Alert(kind="intrusion.witness_stale", participant=pid, detail=info))
            self.store.append(s, "intrusion.detected", "cloud", **info)
        log.warning("intrusion response: participant %s submits to round %d but %s", pid, round_id, why)

    def status(self) -> list[dict]:
        with self.store.read() as s:
            size = self._log_size(s)
            return [{"participant": w.participant, "tree_size": w.tree_size, "behind": None if w.tree_size is None
                     else size - w.tree_size, "acked_at": aware(w.acked_at).isoformat() if w.acked_at else None,
                     "stale_alerted_at": aware(w.stale_alerted_at).isoformat() if w.stale_alerted_at else None}
                    for w in s.scalars(select(WitnessAck).order_by(WitnessAck.participant))]
