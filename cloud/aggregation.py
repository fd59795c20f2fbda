"""Aggregation and decryption, off the request path: one worker thread carries each closed round through
aggregating -> decrypting -> completed, from whatever the database says, so a restart resumes where a crash left it.

aggregating: the homomorphic sum of the contributors' ciphertexts (public context only), stored with the round.
decrypting: the custodian checks every contributing ledger row and decrypts only the sum it rebuilds itself
(`cloud.custodian`); FedAvg gives the new weights, the cloud scores them on its validation set, and the candidate
version is registered in the same transaction as the "completed" state. Progress of the round in hand is visible
(`progress(round_id)`, served with the round). A custodian refusal or any other failure fails the round, never the
server; a round waiting for a sealed custodian continues when it is unsealed.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud import inclusion
from cloud.custodian import CustodianRefusal, LedgerRegionSum, LedgerUpdate
from cloud.db import Participant, Region, RegionAggregateRow, Round, Update
from cloud.drift_monitor import DriftMonitor
from cloud.evaluations import EvaluationSources
from cloud.keys import KeyCustody
from cloud.lineage import declared_unit
from cloud.log_proofs import LogProofs
from cloud.pg_locks import AGGREGATION
from cloud.record_db import ModelVersion, PrivacySpend
from cloud.registry import Registry
from cloud.round_states import transition
from cloud.store import Store
from federation import ckks, dp_accounting

log = logging.getLogger(__name__)
_STOP = -1


class Aggregation:
    def __init__(self, store: Store, registry: Registry, keys: KeyCustody, evaluations: EvaluationSources,
                 drift: DriftMonitor, *, log: LogProofs | None = None) -> None:
        self.unmask: Callable[[int, np.ndarray], tuple[np.ndarray, dict]] | None = None  # cloud.secagg, wired later
        self.explain: Callable[[int], None] | None = None  # cloud.explainer: queue a completed version
        self.store = store
        self.log = log or LogProofs(store)  # inclusion proofs the custodian checks before it decrypts
        self.registry = registry
        self.keys = keys
        self.evaluations = evaluations
        self.drift = drift
        self._queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._queued: set[int] = set()  # queued and not yet taken by the worker (a round is queued once)
        self._progress: dict[int, dict] = {}

    # -- the worker ------------------------------------------------------------------------------
    def schedule(self, round_id: int) -> None:
        """Queue a round for the worker (started on first use); a round already waiting is not queued twice."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="aggregation", daemon=True)
                self._thread.start()
            if round_id in self._queued:
                return
            self._queued.add(round_id)
        self._queue.put(round_id)

    def stop(self, timeout: float = 10.0) -> None:
        """Let the round in hand finish (or time out), then stop the worker."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def _work(self) -> None:
        while (round_id := self._queue.get()) != _STOP:
            with self._lock:
                self._queued.discard(round_id)
            try:
                self.advance(round_id)
            except Exception:  # the worker must outlive any one round
                log.exception("aggregation worker: round %s", round_id)

    def resume(self) -> None:
        """Queue every round a crash (or a sealed custodian) left in aggregating or decrypting."""
        with self.store.read() as s:
            waiting = list(s.scalars(select(Round.id).where(Round.state.in_(("aggregating", "decrypting")))))
        for rid in waiting:
            self.schedule(rid)

    def progress(self, round_id: int) -> dict | None:
        return self._progress.get(round_id)

    def _stage(self, round_id: int, stage: str, *, done: int = 0, total: int = 0) -> None:
        self._progress[round_id] = {"stage": stage, "done": done, "total": total, "at": time.time()}

    # -- one round ---------------------------------------------------------------------------------
    def advance(self, round_id: int) -> None:
        """Carry a round through aggregating and decrypting (idempotent; synchronous). One process at a time works
        on a round (`Store.claim`): a replica that finds it claimed leaves it; if the claimant dies, its claim goes
        with its connection and the next tick's `resume` of a surviving replica takes the round over."""
        with self.store.claim(AGGREGATION, round_id) as mine:
            if mine:
                self._advance(round_id)

    def _advance(self, round_id: int) -> None:
        try:
            with self.store.read() as s:
                r = s.get(Round, round_id)
                state = r.state if r is not None else None
            if state == "aggregating":
                self.aggregate(round_id)
                with self.store.read() as s:
                    state = s.get(Round, round_id).state
            if state == "decrypting":
                if self.keys.custodian is None:
                    self._stage(round_id, "waiting for the custodian to be unsealed")
                    log.info("round %s waits for the custodian to be unsealed", round_id)
                    return
                self.decrypt(round_id)
            self._progress.pop(round_id, None)
        except CustodianRefusal as exc:
            self._fail(round_id, f"custodian refused: {exc}", audit=("custodian.refused", str(exc)))
        except Exception as exc:  # a failed aggregation fails the round, never the server
            log.exception("aggregation of round %s failed", round_id)
            self._fail(round_id, f"aggregation failed: {exc}"[:500])

    def _fail(self, round_id: int, reason: str, *, audit: tuple[str, str] | None = None) -> None:
        self._progress.pop(round_id, None)
        with self.store.tx() as s:
            if audit is not None:
                self.store.append(s, audit[0], "custodian", round=round_id, reason=audit[1])
            r = s.get(Round, round_id)
            if r.state in ("aggregating", "decrypting"):
                r.failure_reason = reason
                transition(self.store, s, r, "failed", reason=reason)

    @staticmethod
    def _contributing(s: Session, r: Round) -> list[Update]:
        ups = s.scalars(select(Update).where(Update.round_id == r.id).order_by(Update.participant)).all()
        return [u for u in ups if u.participant in set(r.contributors or [])]

    @staticmethod
    def _region_sums(s: Session, r: Round) -> list[RegionAggregateRow]:
        """The round's accepted region aggregates; each must lie wholly among the contributors (it cannot be split)."""
        rows = list(s.scalars(select(RegionAggregateRow).where(RegionAggregateRow.round_id == r.id,
                                                               RegionAggregateRow.state == "accepted")
                              .order_by(RegionAggregateRow.aggregate_sha256)))
        for g in rows:
            outside = set(g.statement["contributors"]) - set(r.contributors or [])
            if outside:
                raise ValueError(f"region {g.region}'s aggregate includes non-contributors {sorted(outside)}")
        return rows

    def aggregate(self, round_id: int) -> None:
        with self.store.read() as s:
            r = s.get(Round, round_id)
            blobs = [u.ciphertext for u in self._contributing(s, r) if u.region is None]
            blobs += [g.aggregate for g in self._region_sums(s, r)]
        self._stage(round_id, "aggregating", total=len(blobs))
        summed = ckks.sum_encrypted(self.keys.public_context, blobs)
        self._stage(round_id, "aggregating", done=len(blobs), total=len(blobs))
        with self.store.tx() as s:
            r = s.get(Round, round_id)
            if r.state != "aggregating":  # summed meanwhile by whoever held the claim before
                return
            r.aggregate, r.aggregate_sha256 = summed, hashlib.sha256(summed).hexdigest()
            self.store.append(s, "aggregate.computed", "cloud", round=round_id, contributors=r.contributors,
                              aggregate_sha256=r.aggregate_sha256)
            transition(self.store, s, r, "decrypting")

    def decrypt(self, round_id: int) -> None:
        custodian = self.keys.custodian
        with self.store.read() as s:
            r = s.get(Round, round_id)
            ups = self._contributing(s, r)
            self._stage(round_id, "decrypting", total=len(ups))
            keys = {p.id: p.public_key for p in s.scalars(select(Participant))}
            ledger = [LedgerUpdate(participant=u.participant, public_key=keys[u.participant], envelope=u.envelope,
                                   signature=u.signature, ciphertext=u.ciphertext, region=u.region) for u in ups]
            region_keys = {g.id: g.public_key for g in s.scalars(select(Region))}
            region_sums = [LedgerRegionSum(region=g.region, public_key=region_keys[g.region], statement=g.statement,
                                           signature=g.signature, aggregate=g.aggregate)
                           for g in self._region_sums(s, r)]
            aggregate, quorum, contributors = r.aggregate, r.quorum, list(r.contributors or [])
            total = sum(u.n_samples for u in ups)
            base_weights = Registry.weights(s.get(ModelVersion, r.base_model_version))
            units = {u.participant: declared_unit(u.envelope) for u in ups}
            privacy = {sp.participant: {"epsilon": sp.epsilon_recomputed, "delta": sp.delta,
                                        "unit": units.get(sp.participant, dp_accounting.DEFAULT_UNIT),
                                        "accountant": sp.accountant, "cap": sp.cap}
                       for sp in s.scalars(select(PrivacySpend).where(PrivacySpend.round_id == round_id))}
        evidence = inclusion.gather(self.store, self.log, round_id)  # the log's word on what is summed
        weighted_delta = custodian.decrypt_aggregate(aggregate, updates=ledger, quorum=quorum, round_id=round_id,
                                                     evidence=evidence, log_key=self.store.audit.public_key_b64,
                                                     region_sums=region_sums)
        unmasked = None
        if self.unmask is not None:  # the decrypted sum is masked: remove the masks (cloud.secagg)
            self._stage(round_id, "unmasking", done=len(ups), total=len(ups))
            weighted_delta, unmasked = self.unmask(round_id, weighted_delta)
        new_weights = (base_weights + ckks.average_update(weighted_delta, total)).astype(np.float32)
        self._stage(round_id, "scoring", done=len(ups), total=len(ups))
        validation_scores = self.evaluations.score_on_validation(new_weights)  # before "completed": gates use it
        with self.store.tx() as s:
            r = s.get(Round, round_id)
            if r.state != "decrypting":  # finished meanwhile (a duplicate schedule)
                return
            self.store.append(s, "aggregate.decrypted", "custodian", round=round_id, contributors=contributors,
                              custodian_mode=custodian.mode, aggregate_sha256=r.aggregate_sha256, unmasked=unmasked)
            m = self.registry.register_candidate(s, round_id=round_id, weights=new_weights, contributors=contributors,
                                                 n_samples=total, privacy=privacy)
            r.result_model_version = m.version
            self.evaluations.store_validation(s, m.version, validation_scores)
            self.drift.snapshot_baseline(s, r)
            transition(self.store, s, r, "completed", model_version=m.version)
        log.info("round %s completed: model v%s from %s", round_id, m.version, contributors)
        if self.explain is not None:
            self.explain(m.version)
