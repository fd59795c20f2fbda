"""Secure aggregation's messages at the cloud: participants' signed keys, shares, consistency signatures and
unmasking shares, each checked against the round's phase and graph, stored and audited, then handed to the phase
machine (`cloud.secagg`) to advance; and what participants and staff may see of a round's secure aggregation.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud import batches
from cloud.batches import Signed
from cloud.db import Participant, Round, SecAggMessage, SecAggRound, Update
from cloud.errors import BadRequest, CloudError, Conflict, Forbidden
from cloud.participants import Participants
from cloud.round_states import get_round
from cloud.secagg import PHASES, SecureAggregation, messages_of
from cloud.store import Store, aware
from federation import secagg, shamir
from federation.responses import (
    SecAggAck,
    SecAggAdvertView,
    SecAggBatchItem,
    SecAggBatchResult,
    SecAggOwnView,
    SecAggStatus,
    SecAggView,
    SecAggViews,
)
from federation.signing import canonical_json
from federation.wire import (
    SecAggBatch,
    SecAggConsistency,
    SecAggKeys,
    SecAggShares,
    SecAggUnmask,
    SecAggViewBatch,
    SecAggViewRequest,
)

VIEW_FRESHNESS_S = 300.0
MAX_TOKEN_CHARS = 400  # a base64 ChaCha20-Poly1305 box of two 66-byte shares is about 260 characters


def _digest(doc: dict) -> str:
    return hashlib.sha256(canonical_json(doc)).hexdigest()


def _check_public_key(raw: bytes, what: str) -> None:
    """Refuse an X25519 key that is a low-order point (its agreements would be all zero, RFC 7748 §6.1)."""
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError as exc:
        raise BadRequest(f"{what} is not a usable X25519 public key: {exc}") from exc


class StoredMessage(NamedTuple):
    participant: str
    doc: dict
    signature: str


class SecAggMessages:
    def __init__(self, store: Store, participants: Participants, phases: SecureAggregation) -> None:
        self.store = store
        self.participants = participants
        self.phases = phases
        self._left: dict[tuple[int, str], list[StoredMessage]] = {}  # messages of phases their round has left
        self._lock = threading.Lock()

    def post_keys(self, round_id: int, msg: SecAggKeys) -> SecAggAck:
        return self._post(round_id, "advertise", msg.advert.model_dump(mode="json"), msg.signature)

    def post_shares(self, round_id: int, msg: SecAggShares) -> SecAggAck:
        return self._post(round_id, "share", msg.doc.model_dump(mode="json"), msg.signature)

    def post_consistency(self, round_id: int, msg: SecAggConsistency) -> SecAggAck:
        return self._post(round_id, "consistency", msg.doc.model_dump(mode="json"), msg.signature)

    def post_unmask(self, round_id: int, msg: SecAggUnmask) -> SecAggAck:
        return self._post(round_id, "unmask", msg.doc.model_dump(mode="json"), msg.signature)

    def post_batch(self, round_id: int, batch: SecAggBatch) -> SecAggBatchResult:
        """Several participants' messages in one request (`cloud.batches`: every signature first). Each message is
        checked, stored and audited as if posted alone, with its own refusal, in one transaction; the phase machine
        runs once, after the last."""
        items = [("advertise", m.advert, m.signature) for m in batch.keys] \
            + [("share", m.doc, m.signature) for m in batch.shares] \
            + [("consistency", m.doc, m.signature) for m in batch.consistency] \
            + [("unmask", m.doc, m.signature) for m in batch.unmask]
        docs = [(phase, doc.model_dump(mode="json"), signature) for phase, doc, signature in items]
        signed = [Signed(doc["participant"], doc, signature, f"secagg.{phase}",
                         {"round": round_id, "doc_sha256": _digest(doc)}) for phase, doc, signature in docs]
        batches.authenticate(self.store, self.participants, signed, domain=secagg.DOMAIN, kind="secagg.rejected")
        results = []
        with self.store.tx() as s:
            for (phase, doc, signature), item in zip(docs, signed, strict=True):
                pid = doc["participant"]
                try:
                    with self.store.refusals("secagg.rejected", pid, session=s, action=item.action, **item.detail):
                        ack = self._accept(s, round_id, phase, doc, signature, authenticated=True)
                except CloudError as exc:
                    results.append(SecAggBatchItem(participant=pid, phase=phase, status=exc.status,
                                                   detail=exc.reason))
                else:
                    results.append(SecAggBatchItem(participant=pid, phase=phase, status=200,
                                                   duplicate=ack.duplicate))
        if any(r.status == 200 and not r.duplicate for r in results):
            self.phases.advance(round_id)
        return SecAggBatchResult(round=round_id, results=results)

    # -- each phase's checks, after the signature, the round's phase and a duplicate --------------------------
    def _check_advert(self, s: Session, r: Round, sa: SecAggRound, doc: dict) -> None:
        if doc["participant"] not in r.expected:
            raise Forbidden(f"participant {doc['participant']} is not expected in round {r.id}")
        for field in ("c_pk", "s_pk"):
            _check_public_key(secagg._unb64_key(doc[field], field), field)

    def _check_shares(self, s: Session, r: Round, sa: SecAggRound, doc: dict) -> None:
        me = doc["participant"]
        if me not in sa.u1:
            raise Conflict(f"participant {me} advertised no keys in round {r.id} (not in U1)")
        want, got = set(self.phases.params(s, r.id, sa.u1).graph[me]), set(doc["shares"])
        if got != want:
            raise BadRequest(f"shares must go to exactly the neighbours of {me}: missing {sorted(want - got)}, "
                             f"not neighbours {sorted(got - want)}")
        if any(len(t) > MAX_TOKEN_CHARS for t in doc["shares"].values()):
            raise BadRequest(f"an encrypted share exceeds {MAX_TOKEN_CHARS} characters")

    def _check_view(self, s: Session, r: Round, sa: SecAggRound, doc: dict) -> secagg.Round:
        rnd = self.phases.params(s, r.id, sa.u1)
        if doc["view_sha256"] != rnd.view_digest(sa.u2, sa.u3):
            raise BadRequest("the signed view does not match the round's U1 keys, U2 and U3")
        return rnd

    def _check_consistency(self, s: Session, r: Round, sa: SecAggRound, doc: dict) -> None:
        if doc["participant"] not in sa.u3:
            raise Conflict(f"participant {doc['participant']} has no accepted input in round {r.id} (not in U3)")
        self._check_view(s, r, sa, doc)

    def _check_unmask(self, s: Session, r: Round, sa: SecAggRound, doc: dict) -> None:
        me = doc["participant"]
        if me not in sa.u4:
            raise Conflict(f"participant {me} did not sign the round's view (not in U4)")
        rnd = self._check_view(s, r, sa, doc)
        want_b = {o for o in rnd.holders(me) if o in sa.u3}
        want_sk = {o for o in rnd.graph[me] if o in sa.u2 and o not in sa.u3}
        if set(doc["b_shares"]) != want_b or set(doc["sk_shares"]) != want_sk:
            raise BadRequest(f"{me} must reveal self-mask shares of {sorted(want_b)} and mask-key shares of "
                             f"{sorted(want_sk)}, nothing else (never both for one participant)")
        for share in [*doc["b_shares"].values(), *doc["sk_shares"].values()]:
            if len(share) != 2 * shamir.SHARE_BYTES or any(c not in "0123456789abcdef" for c in share):
                raise BadRequest("a share is not 66 bytes of lowercase hex")

    def _post(self, round_id: int, phase: str, doc: dict, signature: str) -> SecAggAck:
        with self.store.refusals("secagg.rejected", doc["participant"], action=f"secagg.{phase}", round=round_id,
                                 doc_sha256=_digest(doc)), self.store.tx() as s:
            ack = self._accept(s, round_id, phase, doc, signature)
        if not ack.duplicate:
            self.phases.advance(round_id)
        return ack

    def _accept(self, s: Session, round_id: int, phase: str, doc: dict, signature: str, *,
                authenticated: bool = False) -> SecAggAck:
        """Check one message and store it with its audit entry in `s`; every check comes before any write, so a
        refusal leaves the transaction as it found it. `authenticated`: its signature was checked already
        (`cloud.batches`)."""
        check = {"advertise": self._check_advert, "share": self._check_shares,
                 "consistency": self._check_consistency, "unmask": self._check_unmask}[phase]
        pid = doc["participant"]
        digest = _digest(doc)
        if doc["round"] != round_id:
            raise BadRequest(f"message is for round {doc['round']}, posted to round {round_id}")
        if not authenticated:
            self.participants.verified(s, pid, doc, signature, domain=secagg.DOMAIN)
        r = get_round(s, round_id)
        prior = s.scalar(select(SecAggMessage).where(SecAggMessage.round_id == round_id,
                                                     SecAggMessage.participant == pid, SecAggMessage.phase == phase))
        if prior is not None:
            if prior.doc_sha256 == digest:
                return SecAggAck(status="accepted", duplicate=True, round=round_id, phase=phase)
            raise Conflict(f"participant {pid} already sent a different {phase} message in round {round_id}")
        sa = s.get(SecAggRound, round_id)
        if r.state != "collecting" or sa is None:
            raise Conflict(f"round {round_id} is not collecting (state: {r.state})")
        if sa.phase != phase:
            raise Conflict(f"round {round_id} is in secure-aggregation phase {sa.phase}, not {phase}")
        check(s, r, sa, doc)
        s.add(SecAggMessage(round_id=round_id, participant=pid, phase=phase, doc=doc, signature=signature,
                            doc_sha256=digest))
        self.store.append(s, f"secagg.{'keys' if phase == 'advertise' else phase}", pid, round=round_id,
                          doc_sha256=digest)
        return SecAggAck(status="accepted", duplicate=False, round=round_id, phase=phase)

    # -- what participants and staff see --------------------------------------------------------------------
    def view(self, round_id: int, req: SecAggViewRequest) -> SecAggView:
        with self.store.read() as s:
            r, sa, own = self._own_view(s, round_id, req)
            return SecAggViews(round=round_id, **self._shared_view(s, r, sa), views=[own]).view_of(own)

    def views(self, round_id: int, batch: SecAggViewBatch) -> SecAggViews:
        """Several participants' views in one answer (what they share is computed and sent once); after every
        signature (`cloud.batches`), any refusal is that request's own."""
        batches.authenticate(self.store, self.participants,
                             [Signed(req.participant, req.model_dump(mode="json", exclude={"signature"}), req.signature,
                                     "secagg.view", {"round": round_id}) for req in batch.requests],
                             domain=secagg.DOMAIN, kind="secagg.rejected")
        owns, shared = [], None
        with self.store.read() as s:
            for req in batch.requests:
                try:
                    r, sa, own = self._own_view(s, round_id, req, authenticated=True)
                except CloudError as exc:
                    owns.append(SecAggOwnView(participant=req.participant, status=exc.status, detail=exc.reason))
                    continue
                owns.append(own)
                shared = shared or self._shared_view(s, r, sa)
            return SecAggViews(round=round_id, **(shared or {}), views=owns)

    def _own_view(self, s: Session, round_id: int, req: SecAggViewRequest, *, authenticated: bool = False
                  ) -> tuple[Round, SecAggRound, SecAggOwnView]:
        """Check one signed view request (its signature too, unless `authenticated` already); the round, its secure
        aggregation and the requester's own part."""
        with self.store.refusals("secagg.rejected", req.participant, action="secagg.view", round=round_id):
            if req.round != round_id:
                raise BadRequest(f"view request is for round {req.round}, posted to round {round_id}")
            if not authenticated:
                doc = req.model_dump(mode="json", exclude={"signature"})
                self.participants.verified(s, req.participant, doc, req.signature, domain=secagg.DOMAIN)
            if abs(time.time() - req.at) > VIEW_FRESHNESS_S:
                raise BadRequest(f"view request is {time.time() - req.at:.0f} s old; at most {VIEW_FRESHNESS_S:.0f}")
            r = get_round(s, round_id)
            sa = s.get(SecAggRound, round_id)
            if req.participant not in r.expected or sa is None:
                raise Forbidden(f"participant {req.participant} takes no part in round {round_id}")
        me = req.participant
        sent = set(s.scalars(select(SecAggMessage.phase).where(SecAggMessage.round_id == round_id,
                                                              SecAggMessage.participant == me)))
        if s.scalar(select(Update.id).where(Update.round_id == round_id, Update.participant == me)) is not None:
            sent.add("input")
        inbox = {m.participant: m.doc["shares"][me] for m in self._messages(s, sa, "share")
                 if m.participant in (sa.u2 or []) and me in m.doc["shares"]}
        return r, sa, SecAggOwnView(participant=me, status=200, inbox=inbox, sent=sorted(sent))

    def _shared_view(self, s: Session, r: Round, sa: SecAggRound) -> dict:
        """What every participant's view of the round holds alike."""
        keys = {p.id: p.public_key for p in s.scalars(select(Participant).where(Participant.id.in_(sa.u1 or [])))}
        return {"phase": sa.phase if r.state == "collecting" else r.state,
                "phase_deadline_at": aware(sa.phase_deadline_at).isoformat(),
                "adverts": [SecAggAdvertView(participant=m.participant, identity_key=keys[m.participant],
                                             advert=m.doc, signature=m.signature)
                            for m in self._messages(s, sa, "advertise") if m.participant in (sa.u1 or [])],
                "u2": sa.u2, "u3": sa.u3,
                "consistency": [{"participant": m.participant, "signature": m.signature}
                                for m in self._messages(s, sa, "consistency") if m.participant in (sa.u4 or [])]}

    def _messages(self, s: Session, sa: SecAggRound, phase: str) -> list[StoredMessage]:
        """A round's messages of one phase. Those of a phase the round has left never change (one message per
        participant and phase, stored once), so they are read once per process, not once per participant's view:
        a view of a round of n would otherwise read all n x 3 messages, n times a phase."""
        def read() -> list[StoredMessage]:
            return [StoredMessage(m.participant, m.doc, m.signature) for m in messages_of(s, sa.round_id, phase)]

        if PHASES.index(sa.phase) <= PHASES.index(phase):  # the phase is open: its messages may still arrive
            return read()
        key = (sa.round_id, phase)
        with self._lock:
            cached = self._left.get(key)
        if cached is None:
            cached = read()
            with self._lock:
                self._left[key] = cached
                while len(self._left) > 24:  # a few rounds' worth
                    self._left.pop(next(iter(self._left)))
        return cached

    def status(self, round_id: int) -> SecAggStatus:
        with self.store.read() as s:
            get_round(s, round_id)
            sa = s.get(SecAggRound, round_id)
            if sa is None:
                raise Conflict(f"round {round_id} has no secure aggregation")
            answered: dict[str, list[str]] = {}
            for m in messages_of(s, round_id):
                answered.setdefault(m.phase, []).append(m.participant)
            n1 = len(sa.u1) if sa.u1 else None
            params = {} if not n1 else {"degree": secagg.degree(n1), "threshold": secagg.threshold(n1),
                                        "dropout_budget": secagg.dropout_budget(n1)}
            return SecAggStatus(round=round_id, phase=sa.phase, u1=sa.u1, u2=sa.u2, u3=sa.u3, u4=sa.u4,
                                phase_deadline_at=aware(sa.phase_deadline_at).isoformat(), answered=answered, **params)
