"""Region relays at the cloud (hierarchical aggregation, `federation.region`): enrollment with a one-time token (the
region's key is pinned like a participant's), the region's signed reads, and the aggregates regions forward.

An aggregate is taken whole or not at all. Checks, cheapest first: the region is enrolled and not suspended, its
statement is signed by its enrolled key and is for this round, the aggregate bytes hash as signed (an exact resend is
acknowledged, never counted twice; an aggregate seen before in another round is a replay), no earlier aggregate of
the region awaits its audit, the statement lists exactly the forwarded envelopes, each addressed to this region by
its participant, and every member passes the checks of a direct submission (`cloud.submissions`: its signature,
round, replay and copy checks, expected and in U2, base model, DP report plausibility and privacy ledger), and the
aggregate parses as masked residues of the model's length. Then, with probability `audit_rate` (drawn from the OS
CSPRNG, after the region has committed to its signed statement) the cloud asks for the inputs: the aggregate waits
in state ``audit`` until the region posts every input it summed, signed; the inputs must be exactly the listed ones,
each the ciphertext its participant signed, and sum (`federation.ckks.sum_encrypted`) byte for byte to the
aggregate. A failed audit refuses the aggregate, suspends the region and alerts the compliance officer; only the
two-person rule lifts a suspension (`reinstate`: requested by one user, carried out when a second, a compliance
officer, approves it in `cloud.approvals`; both audited, the row change bound to the log entry). Accepting
stores one update row per member (ciphertext b"", `region` set, its privacy spend) and the aggregate row in one
audited transaction; the round then closes as for direct submissions.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud import rbac
from cloud.db import Alert, Participant, Region, RegionAggregateRow, utcnow
from cloud.errors import BadRequest, CloudError, Conflict, Forbidden, NotFound, Unauthorized
from cloud.keys import KeyCustody
from cloud.participants import Participants, check_signed_read, raw_ed25519_key
from cloud.privacy import Spend
from cloud.rounds import Rounds
from cloud.store import Store
from cloud.submissions import CheckedUpdate, Submissions
from federation import ckks, model, region, request_auth
from federation.enrollment import binding_mac
from federation.errors import ConfigError, SignatureError
from federation.responses import Enrolled, RegionAck
from federation.wire import RegionAggregate, RegionEnrollment, RegionInputs, UpdateEnvelope

AUDIT_RESOLUTION = 1_000_000
DEFAULT_AUDIT_RATE = 0.1  # a region cheating in k aggregates is caught with probability 1 - 0.9^k


@dataclass(frozen=True)
class _Member:
    env: UpdateEnvelope
    signature: str
    checked: CheckedUpdate


class Regions:
    def __init__(self, store: Store, participants: Participants, rounds: Rounds, keys: KeyCustody,
                 submissions: Submissions, *, audit_rate: float) -> None:
        if not 0.0 <= audit_rate <= 1.0:
            raise ConfigError(f"region audit rate must be within [0, 1], got {audit_rate}")
        self.store = store
        self.participants = participants
        self.rounds = rounds
        self.keys = keys
        self.submissions = submissions
        self.audit_rate = audit_rate

    @contextlib.contextmanager
    def _audited(self, actor: str, **detail: object) -> Iterator[None]:
        """Every refusal of a region's request is an audit entry with its reason (401s included: a region is a
        known party, its bad signatures are evidence, not noise)."""
        try:
            yield
        except CloudError as exc:
            self.store.record("access.denied" if exc.status == 403 else "region.rejected", actor, status=exc.status,
                              reason=exc.reason, **detail)
            raise

    # -- enrollment and reads ------------------------------------------------------------------------------
    def enroll(self, req: RegionEnrollment) -> Enrolled:
        with self._audited(req.region_id, action="region.enroll"):
            raw_ed25519_key(req.public_key)
            digest = rbac.token_hash(req.token)
            with self.store.tx() as s:
                tok = Participants.usable_token(s, digest, participant_id=req.region_id, kind="region")
                if tok.kind != "region":  # a participant's token, even one open to any kind, never makes a region
                    raise Forbidden("a region enrolls only with a token issued for kind region")
                if s.get(Region, req.region_id) is not None:
                    raise Conflict(f"region {req.region_id} is already enrolled")
                if s.get(Participant, req.region_id) is not None:
                    raise Conflict(f"{req.region_id} is a participant's id")
                tok.uses_left -= 1
                tok.used_by = [*tok.used_by, req.region_id]
                s.add(Region(id=req.region_id, public_key=req.public_key))
                self.store.append(s, "region.enrolled", req.region_id, public_key=req.public_key,
                                  token_sha256_prefix=digest[:12], token_issued_by=tok.issued_by)
        binding = self.participants.binding
        return Enrolled(participant_id=req.region_id, status="enrolled", binding=binding,
                        binding_mac=binding_mac(digest, binding))

    def authenticate_read(self, authorization: str, *, method: str, path: str, query: str) -> str:
        """The region behind a signed read (`federation.request_auth`, the region's id and key)."""
        parsed = request_auth.parse(authorization)
        if parsed is None:
            raise Unauthorized("a region's read must be signed (Authorization: Wearfed-Participant id=<region>, ...)")
        rid, ts, signature = parsed
        with self._audited(rid, action="region.read", path=path), self.store.read() as s:
            r = s.get(Region, rid)
            if r is None:
                raise Forbidden(f"region {rid} is not enrolled")
            check_signed_read(r.public_key, rid, ts, signature, method=method, path=path, query=query)
        return rid

    def participant_keys(self, region_id: str, caller: str) -> dict[str, str]:
        """Enrolled participants' public keys, for the region to check its participants' signatures."""
        if caller != region_id:
            raise Forbidden(f"region {caller} may read only its own view, not {region_id}'s")
        with self.store.read() as s:
            return {p.id: p.public_key for p in s.scalars(select(Participant).order_by(Participant.id))}

    # -- aggregates ----------------------------------------------------------------------------------------
    def submit(self, round_id: int, body: RegionAggregate, *, body_bytes: int) -> RegionAck:
        arrived = utcnow()
        st = body.statement
        with self._audited(st.region, action="region.aggregate", round=round_id,
                           aggregate_sha256=st.aggregate_sha256):
            ack, members, aggregate = self._check(round_id, body, arrived)
            if ack is not None:
                return ack
            spends = [self.submissions.check_privacy(round_id, m.env, m.checked) for m in members]
            audit = secrets.randbelow(AUDIT_RESOLUTION) < round(self.audit_rate * AUDIT_RESOLUTION)
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
            self._verified(s, st.region, doc, body.signature)
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
    def _verified(s: Session, region_id: str, doc: dict, signature: str,
                  verify_with=region.verify_statement) -> Region:  # noqa: ANN001
        r = s.get(Region, region_id)
        if r is None:
            raise Forbidden(f"region {region_id} is not enrolled")
        try:
            verify_with(r.public_key, doc, signature)
        except SignatureError as exc:
            raise Unauthorized(f"not signed by region {region_id}'s enrolled key: {exc}") from exc
        if r.suspended:
            raise Forbidden(f"region {region_id} is suspended: {r.suspended}")
        return r

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
        with self._audited(actor, action="region.audit", round=round_id, aggregate_sha256=aggregate_sha256):
            if row is None:
                raise NotFound(f"no aggregate {aggregate_sha256[:16]}... in round {round_id}")
            contributors = dict(row.statement["contributors"])
            if row.state == "accepted":
                return RegionAck(status="accepted", duplicate=True, round=round_id, aggregate_sha256=aggregate_sha256,
                                 contributors=sorted(contributors))
            if row.state != "audit":
                raise Conflict(f"aggregate {aggregate_sha256[:16]}... was {row.state}: {row.reason}")
            inputs = self._inputs(row, body)
            failure = self._audit_failure(row, contributors, inputs)
            if failure is not None:
                self._refuse(row, failure, body_bytes=body_bytes)
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

    def _inputs(self, row: RegionAggregateRow, body: RegionInputs) -> dict[str, bytes]:
        if body.aggregate_sha256 != row.aggregate_sha256:
            raise BadRequest(f"inputs are for aggregate {body.aggregate_sha256[:16]}..., posted to "
                             f"{row.aggregate_sha256[:16]}...")
        try:
            inputs = {p: base64.b64decode(c, validate=True) for p, c in body.inputs.items()}
        except ValueError as exc:
            raise BadRequest("an input is not base64") from exc
        doc = region.inputs_doc(round_id=row.round_id, region=row.region, aggregate_sha256=row.aggregate_sha256,
                                inputs=inputs)
        with self.store.read() as s:
            self._verified(s, row.region, doc, body.signature, verify_with=region.verify_inputs)
        return inputs

    def _audit_failure(self, row: RegionAggregateRow, contributors: dict[str, str], inputs: dict[str, bytes]
                       ) -> str | None:
        """Why the signed inputs do not make the signed aggregate (None: they do)."""
        if sorted(inputs) != sorted(contributors):
            return (f"the inputs are of {sorted(inputs)}, the statement lists {sorted(contributors)} "
                    f"(unlisted: {sorted(set(inputs) - set(contributors))}, "
                    f"missing: {sorted(set(contributors) - set(inputs))})")
        for pid, blob in inputs.items():
            if hashlib.sha256(blob).hexdigest() != contributors[pid]:
                return f"the input of {pid} is not the ciphertext {pid} signed"
        try:
            rebuilt = ckks.sum_encrypted(self.keys.public_context, [inputs[p] for p in sorted(inputs)])
        except ckks.CKKSError as exc:
            return f"the inputs do not parse: {exc}"
        if rebuilt != row.aggregate:
            return ("the listed inputs do not sum to the signed aggregate (a contribution was dropped, added or "
                    "altered)")
        return None

    # -- staff: the list, and lifting a suspension (two-person rule) ------------------------------------------
    def list(self) -> list[dict]:
        with self.store.read() as s:
            return [{"id": r.id, "public_key": r.public_key, "enrolled_at": r.enrolled_at.isoformat(),
                     "suspended": r.suspended} for r in s.scalars(select(Region).order_by(Region.id))]

    @staticmethod
    def suspended(s: Session, region_id: str) -> Region:
        """The region, if enrolled and suspended (what a reinstatement request and its approval both check)."""
        r = s.get(Region, region_id)
        if r is None:
            raise NotFound(f"region {region_id} is not enrolled")
        if not r.suspended:
            raise Conflict(f"region {region_id} is not suspended")
        return r

    def reinstate(self, s: Session, region_id: str, *, requested_by: str, approved_by: str, reason: str,
                  approval: int) -> dict:
        """Lift a suspension inside the transaction that approves it (`cloud.approvals`); audited with both names."""
        r = self.suspended(s, region_id)
        was, r.suspended = r.suspended, None
        self.store.append(s, "region.reinstated", requested_by, region=region_id, reason=reason, suspended=was,
                          approved_by=approved_by, approval=approval)
        return {"region": region_id, "suspended": None, "was": was}

    def _refuse(self, row: RegionAggregateRow, reason: str, *, body_bytes: int) -> None:
        with self.store.tx() as s:
            live = s.get(RegionAggregateRow, row.id)
            live.state, live.reason = "refused", reason[:500]
            r = s.get(Region, row.region)
            r.suspended = f"failed the audit of its aggregate {row.aggregate_sha256[:16]}... in round {row.round_id}"
            detail = {"round": row.round_id, "region": row.region, "aggregate_sha256": row.aggregate_sha256,
                      "reason": reason, "inputs_bytes": body_bytes}
            s.add(Alert(kind="region.audit_failed", participant=None, detail=detail))
            self.store.append(s, "region.audit.failed", "cloud", **detail)
            self.store.append(s, "region.suspended", "cloud", region=row.region, reason=r.suspended)
