"""The aggregates region relays forward to the cloud (hierarchical aggregation, `federation.region`), checked,
audited on a random share and accepted or refused. Enrollment and signed reads: `cloud.region_identity`; the audit's
checks: `cloud.region_audits`.

An aggregate is taken whole or not at all. Checks, cheapest first: the region is enrolled and not suspended, its
statement is signed by its enrolled key and is for this round, the aggregate bytes hash as signed (an exact resend is
acknowledged, never counted twice; an aggregate seen before in another round is a replay), no earlier aggregate of
the region awaits its audit, the statement lists exactly the forwarded envelopes, each addressed to this region by
its participant, and every member passes the checks of a direct submission (`cloud.submissions`: its signature,
round, replay and copy checks, expected and in U2, base model, DP report plausibility and privacy ledger), and the
aggregate parses as masked residues of the model's length. Then, with probability `audit_rate` (drawn from the OS
CSPRNG after the region has committed to its signed statement) the cloud asks for the inputs: the aggregate waits
in state ``audit`` until the region posts every input it summed, signed; the inputs must be exactly the listed ones,
each the ciphertext its participant signed, and sum (`federation.ckks.sum_encrypted`) byte for byte to the
aggregate. A failed audit refuses the aggregate, suspends the region and alerts the compliance officer; only the
two-person rule lifts a suspension (`cloud.region_identity`, `reinstate`: requested by one user, carried out when a
second, a compliance officer, approves it in `cloud.approvals`; both audited, the row change bound to the log
entry). Accepting stores one update row per member (ciphertext b"", `region` set, its privacy spend) and the
aggregate row in one audited transaction; the round then closes as for direct submissions.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.db import RegionAggregateRow, utcnow
from cloud.errors import BadRequest, Conflict, NotFound
from cloud.keys import KeyCustody
from cloud.participants import Participants
from cloud.privacy import Spend
from cloud.region_audits import audit_failure, demand_audit, refuse_and_suspend, signed_inputs
from cloud.region_identity import RegionIdentity
from cloud.rounds import Rounds
from cloud.store import Store
from cloud.submissions import CheckedUpdate, Submissions
from federation import ckks, model, region
from federation.errors import ConfigError
from federation.responses import RegionAck
from federation.wire import RegionAggregate, RegionInputs, UpdateEnvelope


@dataclass(frozen=True)
class _Member:
    env: UpdateEnvelope
    signature: str
    checked: CheckedUpdate


class Regions(RegionIdentity):
    def __init__(self, store: Store, participants: Participants, rounds: Rounds, keys: KeyCustody,
                 submissions: Submissions, *, audit_rate: float) -> None:
        if not 0.0 <= audit_rate <= 1.0:
            raise ConfigError(f"region audit rate must be within [0, 1], got {audit_rate}")
        super().__init__(store, participants)
        self.rounds = rounds
        self.keys = keys
        self.submissions = submissions
        self.audit_rate = audit_rate

    # -- aggregates ----------------------------------------------------------------------------------------
    def submit(self, round_id: int, body: RegionAggregate, *, body_bytes: int) -> RegionAck:
        arrived = utcnow()
        st = body.statement
        with self.audited(st.region, action="region.aggregate", round=round_id,
                           aggregate_sha256=st.aggregate_sha256):
            ack, members, aggregate = self._check(round_id, body, arrived)
            if ack is not None:
                return ack
            spends = [self.submissions.check_privacy(round_id, m.env, m.checked) for m in members]
            audit = demand_audit(self.audit_rate)
            with self.store.tx() as s:
                row = RegionAggregateRow(round_id=round_id, region=st.region, state="audit" if audit else "accepted",
                                         statement=st.model_dump(mode="json"), signature=body.signature,
                                         members=[m.model_dump(mode="json") for m in body.members],
                                         aggregate=aggregate, aggregate_sha256=st.aggregate_sha256,
                                         bytes_received=body_bytes)
                s.add(row)
                if audit:
                    self.store.append(s, "region.audit.demanded", "cloud", round=round_id, region=st.region,
                                      aggregate_sha256=st.aggregate_sha256, contributors=sorted(st.contributors))
                else:
                    self._accept(s, round_id, row, members, spends, arrived=arrived)
        if not audit:
            self.rounds.maybe_close(round_id)
        return RegionAck(status="audit" if audit else "accepted", duplicate=False, round=round_id,
                         aggregate_sha256=st.aggregate_sha256, contributors=sorted(st.contributors))

    def _check(self, round_id: int, body: RegionAggregate, arrived: datetime
               ) -> tuple[RegionAck | None, list[_Member], bytes]:
        """Everything but the privacy ledger; an ack (and nothing else) for an exact resend."""
        st = body.statement
        doc = st.model_dump(mode="json")
        try:
            aggregate = base64.b64decode(body.aggregate, validate=True)
        except ValueError as exc:
            raise BadRequest("aggregate is not base64") from exc
        digest = hashlib.sha256(aggregate).hexdigest()
        with self.store.read() as s:
            self.verified(s, st.region, doc, body.signature)
            if st.round != round_id:
                raise BadRequest(f"aggregate is for round {st.round}, posted to round {round_id} (a replay?)")
            if digest != st.aggregate_sha256:
                raise BadRequest(f"aggregate sha256 {digest} does not match the signed {st.aggregate_sha256}")
            seen = s.scalar(select(RegionAggregateRow).where(RegionAggregateRow.aggregate_sha256 == digest).limit(1))
            if seen is not None:
                return self._resent(seen, round_id, doc), [], aggregate
            pending = s.scalar(select(RegionAggregateRow.aggregate_sha256).where(
                RegionAggregateRow.round_id == round_id, RegionAggregateRow.region == st.region,
                RegionAggregateRow.state == "audit").limit(1))
            if pending is not None:
                raise Conflict(f"region {st.region} has not answered the audit of its aggregate {pending[:16]}... in "
                               f"round {round_id}; no further aggregate of it is taken until it does")
            try:
                region.check_members(doc, {m.envelope.participant: m.envelope.model_dump(mode="json")
                                           for m in body.members})
            except region.RegionError as exc:
                raise BadRequest(str(exc)) from exc
            if len(body.members) != len({m.envelope.participant for m in body.members}):
                raise BadRequest("a participant is forwarded twice in one aggregate")
            members = [self._member(s, round_id, m.envelope, m.signature, arrived) for m in body.members]
        self._parse(aggregate)
        return None, members, aggregate

    def _member(self, s: Session, round_id: int, env: UpdateEnvelope, signature: str, arrived: datetime) -> _Member:
        checked = self.submissions.check_envelope(s, round_id, env, signature, arrived=arrived,
                                                  digest=env.ciphertext_sha256)
        if checked is None:  # accepted already: in another of this region's aggregates, it would count twice
            raise Conflict(f"participant {env.participant}'s update was accepted in an earlier aggregate of region "
                           f"{env.region} in round {round_id}")
        return _Member(env=env, signature=signature, checked=checked)

    def _parse(self, aggregate: bytes) -> None:
        try:
            n = ckks.check(self.keys.public_context, aggregate, encoding=ckks.RESIDUES)
        except ckks.CKKSError as exc:
            raise BadRequest(f"region aggregate: {exc}") from exc
        if n != model.N_PARAMS:
            raise BadRequest(f"region aggregate has {n} values, {model.ARCHITECTURE} has {model.N_PARAMS}")

    @staticmethod
    def _resent(seen: RegionAggregateRow, round_id: int, doc: dict) -> RegionAck:
        if seen.round_id != round_id:
            raise Conflict(f"this aggregate was forwarded in round {seen.round_id} already (a replay)")
        if seen.statement != doc:
            raise Conflict("an aggregate with these bytes was forwarded with another statement")
        if seen.state == "refused":
            raise Conflict(f"this aggregate was refused: {seen.reason}")
        return RegionAck(status="audit" if seen.state == "audit" else "accepted", duplicate=True, round=round_id,
                         aggregate_sha256=seen.aggregate_sha256, contributors=sorted(doc["contributors"]))

    def _accept(self, s: Session, round_id: int, row: RegionAggregateRow, members: list[_Member],
                spends: list[Spend], *, arrived: datetime) -> None:
        for m, spend in zip(members, spends, strict=True):
            self.submissions.store_update(s, round_id, m.env, m.signature, m.checked, spend, arrived=arrived,
                                          body_bytes=0)
        row.state = "accepted"
        self.store.append(s, "region.aggregate.accepted", row.region, round=round_id,
                          aggregate_sha256=row.aggregate_sha256, contributors=sorted(row.statement["contributors"]),
                          bytes=row.bytes_received)

    # -- audits ---------------------------------------------------------------------------------------------
    def answer_audit(self, round_id: int, aggregate_sha256: str, body: RegionInputs, *, body_bytes: int) -> RegionAck:
        arrived = utcnow()
        with self.store.read() as s:
            row = s.scalar(select(RegionAggregateRow).where(RegionAggregateRow.round_id == round_id,
                                                            RegionAggregateRow.aggregate_sha256 == aggregate_sha256))
        actor = row.region if row is not None else "unknown-region"
        with self.audited(actor, action="region.audit", round=round_id, aggregate_sha256=aggregate_sha256):
            if row is None:
                raise NotFound(f"no aggregate {aggregate_sha256[:16]}... in round {round_id}")
            contributors = dict(row.statement["contributors"])
            if row.state == "accepted":
                return RegionAck(status="accepted", duplicate=True, round=round_id, aggregate_sha256=aggregate_sha256,
                                 contributors=sorted(contributors))
            if row.state != "audit":
                raise Conflict(f"aggregate {aggregate_sha256[:16]}... was {row.state}: {row.reason}")
            inputs = signed_inputs(self.store, row, body)
            failure = audit_failure(self.keys.public_context, row, contributors, inputs)
            if failure is not None:
                refuse_and_suspend(self.store, row, failure, body_bytes=body_bytes)
                raise Conflict(f"audit of region {row.region}'s aggregate failed: {failure}; the region is suspended")
            with self.store.read() as s:
                members = [self._member(s, round_id, UpdateEnvelope.model_validate(m["envelope"]), m["signature"],
                                        arrived) for m in row.members]
            spends = [self.submissions.check_privacy(round_id, m.env, m.checked) for m in members]
            with self.store.tx() as s:
                live = s.get(RegionAggregateRow, row.id)
                if live.state != "audit":
                    raise Conflict(f"aggregate {aggregate_sha256[:16]}... was {live.state} meanwhile")
                self.store.append(s, "region.audit.passed", "cloud", round=round_id, region=row.region,
                                  aggregate_sha256=aggregate_sha256, inputs_bytes=body_bytes)
                self._accept(s, round_id, live, members, spends, arrived=arrived)
        self.rounds.maybe_close(round_id)
        return RegionAck(status="accepted", duplicate=False, round=round_id, aggregate_sha256=aggregate_sha256,
                         contributors=sorted(contributors))
