"""Submissions: a participant's signed, CKKS-encrypted update (or signed refusal) for a collecting round.

Checks, cheapest first: envelope for this round, base64, signature by the enrolled key, ciphertext hash as signed,
replay (an exact resend is acknowledged and never counted twice), round still collecting and expecting the
participant, base model, the round in secure aggregation's input phase with the participant in U2 (`cloud.secagg`),
ciphertext parses as masked residues under the public context with the model's length, the DP report's plausibility
against the round (`cloud.dp_plausibility`) and against the privacy ledger (`cloud.privacy`). Signed updates posted
to the wrong round or twice, copied ciphertexts and implausible reports are signalled to intrusion response
(`cloud.intrusion`), which locks and quarantines at its thresholds. The update, its privacy spend and the audit
entry are written in one transaction; then the round may close. An envelope that names a region is refused here: its
region relay forwards it inside a region aggregate, whose members go through the same envelope and privacy checks
(`check_envelope`, `check_privacy`, `store_update`; `cloud.regions`).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.db import Participant, Round, Update, utcnow
from cloud.dp_plausibility import ImplausibleReport, check_plausible
from cloud.errors import BadRequest, Conflict, Forbidden
from cloud.intrusion import Intrusion
from cloud.keys import KeyCustody
from cloud.participants import Participants
from cloud.privacy import PrivacyViolation, Spend, check_report
from cloud.record_db import PrivacySpend, Refusal
from cloud.rounds import Rounds
from cloud.secagg import SecureAggregation
from cloud.store import Store
from federation import ckks, model
from federation.responses import RefusalAck, SubmissionAck
from federation.signing import REFUSAL_DOMAIN
from federation.wire import Refusal as RefusalMsg
from federation.wire import Submission, UpdateEnvelope


@dataclass(frozen=True)
class CheckedUpdate:
    """What the lock-free checks established about a first submission."""

    ciphertext: bytes
    digest: str
    last_spend_id: int | None
    previous_history: list
    cap: float | None
    epochs: int = 1


class Submissions:
    def __init__(self, store: Store, participants: Participants, rounds: Rounds, keys: KeyCustody,
                 secagg: SecureAggregation, intrusion: Intrusion) -> None:
        self.store = store
        self.intrusion = intrusion
        self.secagg = secagg
        self.participants = participants
        self.rounds = rounds
        self.keys = keys

    def submit(self, round_id: int, sub: Submission, *, body_bytes: int) -> SubmissionAck:
        arrived = utcnow()  # lateness is judged on arrival, not after the (slow) checks
        env = sub.envelope
        with self.store.refusals("update.rejected", env.participant, action="submit", round=round_id,
                                 ciphertext_sha256=env.ciphertext_sha256):
            checked = self._check(round_id, sub, arrived)
            if checked is None:  # an exact resend (a node's outbox after a crash): acknowledged, never counted twice
                self.store.record("update.replayed", env.participant, round=round_id,
                                  ciphertext_sha256=env.ciphertext_sha256)
                return SubmissionAck(status="accepted", duplicate=True, round=round_id)
            spend = self.check_privacy(round_id, env, checked)
            self.accept(round_id, sub, checked, spend, arrived=arrived, body_bytes=body_bytes)
        self.rounds.maybe_close(round_id)
        return SubmissionAck(status="accepted", duplicate=False, round=round_id)

    def _check(self, round_id: int, sub: Submission, arrived: datetime) -> CheckedUpdate | None:
        """Everything but the privacy ledger, without the writer lock; None for an exact resend."""
        env = sub.envelope
        try:
            ciphertext = base64.b64decode(sub.ciphertext, validate=True)
        except ValueError as exc:
            raise BadRequest("ciphertext is not base64") from exc
        digest = hashlib.sha256(ciphertext).hexdigest()
        with self.store.read() as s:
            checked = self.check_envelope(s, round_id, env, sub.signature, arrived=arrived, digest=digest)
        if checked is None:
            return None
        if env.region is not None:  # its region relay sums it; sent here, the cloud would count it outside the region
            raise BadRequest(f"this update is addressed to region {env.region}: submit it to that region's relay")
        try:
            n = ckks.check(self.keys.public_context, ciphertext, encoding=ckks.RESIDUES)  # masked (cloud.secagg)
        except ckks.CKKSError as exc:
            raise BadRequest(str(exc)) from exc
        if n != model.N_PARAMS:
            raise BadRequest(f"update has {n} values, {model.ARCHITECTURE} has {model.N_PARAMS}")
        return dataclasses.replace(checked, ciphertext=ciphertext)

    def check_envelope(self, s: Session, round_id: int, env: UpdateEnvelope, signature: str, *, arrived: datetime,
                       digest: str) -> CheckedUpdate | None:
        """A participant's signed envelope against the round and the ledgers (direct, or forwarded by a region, whose
        ciphertext only the region holds: `digest` is then the signed one); None for an exact resend."""
        p = self.participants.verified(s, env.participant, env.model_dump(mode="json"), signature)
        if env.round != round_id:  # a genuine update replayed into another round
            self.intrusion.signal("replays", participant=env.participant, round=round_id, envelope_round=env.round)
            raise BadRequest(f"envelope is for round {env.round}, posted to round {round_id}")
        if digest != env.ciphertext_sha256:
            raise BadRequest(f"ciphertext sha256 {digest} does not match the signed {env.ciphertext_sha256}")
        prior = s.scalar(select(Update).where(Update.round_id == round_id, Update.participant == env.participant))
        if prior is not None:
            if prior.idempotency_key == env.idempotency_key and prior.ciphertext_sha256 == digest \
                    and prior.region == env.region:
                return None
            self.intrusion.signal("replays", participant=env.participant, round=round_id)
            raise Conflict(f"participant {env.participant} already submitted to round {round_id}"
                           + (f" (via region {prior.region})" if prior.region else " (directly)"))
        copy = s.scalar(select(Update.participant).where(Update.ciphertext_sha256 == digest).limit(1))
        if copy is not None:  # a copy of another participant's ciphertext would count its update twice
            self.intrusion.quarantine(round_id, env.participant, digest=digest,
                                      envelope=env.model_dump(mode="json"), rule="copied_ciphertexts")
            self.intrusion.signal("copied_ciphertexts", env.participant, round=round_id, copied_from=copy)
            raise Conflict(f"this ciphertext was already submitted by another participant ({copy}); "
                           "identical ciphertexts are refused")
        r = self.rounds.collecting(s, round_id, arrived=arrived)
        if p.halted:
            raise Forbidden(f"participant {env.participant} is at its privacy cap and halted")
        self._check_round_fit(r, env)
        self.secagg.check_input(s, r, env.participant)
        last = self.participants.last_spend(s, env.participant)
        return CheckedUpdate(ciphertext=b"", digest=digest, last_spend_id=last.id if last else None,
                             previous_history=last.history if last else [], cap=self.participants.cap(p),
                             epochs=r.local_epochs or 1)

    @staticmethod
    def _check_round_fit(r: Round, env: UpdateEnvelope) -> None:
        if env.participant not in r.expected:
            raise Conflict(f"participant {env.participant} is not expected in round {r.id} "
                           "(enrolled later, or halted at its privacy cap)")
        if env.base_model_version != r.base_model_version:
            raise Conflict(f"update is based on model {env.base_model_version}, "
                           f"round {r.id} trains model {r.base_model_version}")

    def check_privacy(self, round_id: int, env: UpdateEnvelope, checked: CheckedUpdate) -> Spend:
        """Check the report fits the round, recompute the participant's epsilon; an implausible report is quarantined
        and signalled, a participant past its cap is halted and the compliance officer alerted."""
        try:
            check_plausible(env.dp, n_samples=env.n_samples, epochs=checked.epochs, policy=self.intrusion.cfg.dp)
        except ImplausibleReport as exc:
            self.intrusion.quarantine(round_id, env.participant, digest=checked.digest,
                                      envelope=env.model_dump(mode="json"), rule=f"implausible_reports:{exc.check}")
            self.intrusion.signal("implausible_reports", env.participant, round=round_id, check=exc.check,
                                  reason=exc.reason)
            raise
        try:
            return check_report(env.dp, previous=checked.previous_history, cap=checked.cap)
        except PrivacyViolation as exc:
            if exc.status == 403:
                with self.store.tx() as s:
                    s.get(Participant, env.participant).halted = True
                    self.participants.raise_alert(s, "budget.exceeded", env.participant, round=round_id,
                                                  cap=checked.cap, reason=exc.reason)
            raise

    def accept(self, round_id: int, sub: Submission, checked: CheckedUpdate, spend: Spend, *, arrived: datetime,
               body_bytes: int) -> None:
        """Store the update and its privacy spend in one audited transaction."""
        with self.store.tx() as s:
            self.store_update(s, round_id, sub.envelope, sub.signature, checked, spend, arrived=arrived,
                              body_bytes=body_bytes)

    def store_update(self, s: Session, round_id: int, env: UpdateEnvelope, signature: str, checked: CheckedUpdate,
                     spend: Spend, *, arrived: datetime, body_bytes: int) -> None:
        """Inside the writer's transaction: re-check what may have changed since `check_envelope`, then store the
        update (with its ciphertext, or b"" when its region's aggregate carries it) and its privacy spend, audited."""
        if s.scalar(select(Update).where(Update.round_id == round_id, Update.participant == env.participant)):
            raise Conflict(f"participant {env.participant} already submitted to round {round_id}")
        if s.scalar(select(Update.id).where(Update.ciphertext_sha256 == checked.digest).limit(1)):
            raise Conflict("an identical ciphertext was accepted meanwhile; identical ciphertexts are refused")
        now_last = self.participants.last_spend(s, env.participant)
        if (now_last.id if now_last else None) != checked.last_spend_id:
            raise Conflict("the privacy ledger changed while this update was checked; resend it")
        self.secagg.check_input(s, self.rounds.collecting(s, round_id, arrived=arrived), env.participant)
        s.add(Update(round_id=round_id, participant=env.participant, n_samples=env.n_samples,
                     envelope=env.model_dump(mode="json"), signature=signature, ciphertext=checked.ciphertext,
                     ciphertext_sha256=checked.digest, idempotency_key=env.idempotency_key,
                     bytes_received=body_bytes, region=env.region))
        s.add(PrivacySpend(round_id=round_id, participant=env.participant,
                           history=[list(h) for h in spend.history], accountant=env.dp.accountant,
                           delta=env.dp.delta, epsilon_declared=env.dp.epsilon_cumulative,
                           epsilon_recomputed=spend.epsilon_cumulative, epsilon_round=spend.epsilon_round,
                           cap=checked.cap))
        self.store.append(s, "update.accepted", env.participant, round=round_id, ciphertext_sha256=checked.digest,
                          n_samples=env.n_samples, epsilon=spend.epsilon_cumulative,
                          epsilon_declared=env.dp.epsilon_cumulative, epsilon_round=spend.epsilon_round,
                          delta=env.dp.delta, unit=env.dp.unit, accountant=env.dp.accountant,
                          **({"region": env.region} if env.region else {}))
        self._halt_at_cap(s, round_id, env, spend, checked.cap)
        self.intrusion.weight_outlier(s, round_id, env.participant, env.n_samples)

    def _halt_at_cap(self, s: Session, round_id: int, env: UpdateEnvelope, spend: Spend, cap: float | None) -> None:
        if cap is not None and spend.epsilon_cumulative >= cap:
            s.get(Participant, env.participant).halted = True
            self.participants.raise_alert(s, "budget.exhausted", env.participant, round=round_id, cap=cap,
                                          epsilon=spend.epsilon_cumulative, delta=env.dp.delta, unit=env.dp.unit,
                                          accountant=env.dp.accountant)

    def refuse(self, round_id: int, msg: RefusalMsg) -> RefusalAck:
        with self.store.refusals("refusal.rejected", msg.participant, action="refuse", round=round_id):
            if msg.round != round_id:
                raise BadRequest(f"refusal is for round {msg.round}, posted to round {round_id}")
            with self.store.tx() as s:
                doc = msg.model_dump(mode="json", exclude={"signature"})
                self.participants.verified(s, msg.participant, doc, msg.signature, domain=REFUSAL_DOMAIN)
                self.rounds.collecting(s, round_id)
                if s.scalar(select(Refusal).where(Refusal.round_id == round_id,
                                                  Refusal.participant == msg.participant)) is None:
                    s.add(Refusal(round_id=round_id, participant=msg.participant, reason=msg.reason))
                    self.store.append(s, "round.refused", msg.participant, round=round_id, reason=msg.reason)
        self.rounds.maybe_close(round_id)
        return RefusalAck(status="refusal-recorded", round=round_id)
