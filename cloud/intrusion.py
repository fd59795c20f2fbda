"""Intrusion response: detection rules over what the cloud already sees, and containment, all audited.

    signal(rule, key) ── count in a sliding window per (rule, key) ──> threshold reached: contain(rule, key)
        contain: lock in memory first (the next request is refused), then one transaction writes the lock
        (`intrusion_locks`), quarantines what the key had in a collecting round, raises a compliance alert
        (`alerts`, the dashboard's list) and appends ``intrusion.contained`` to the audit ledger

Rules (thresholds: `IntrusionConfig`, from cloud/intrusion.default.toml, a `--intrusion` file, or flags):

- ``auth_failures``: 401 answers to one client address (bad or missing bearer tokens, signed reads or signatures
  that do not verify) -> the address is locked for ``address_lock_s``.
- ``bad_signatures``: signed messages (updates, refusals, secure-aggregation messages, reports) whose Ed25519
  signature does not verify under the claimed participant's key, per client address -> address locked. The claimed
  participant is *not* locked: whoever forges its name does not hold its key, and locking it would hand the forger a
  denial of service.
- ``replays``: validly signed updates posted where they do not belong (an envelope of another round, a second
  different update of a participant to one round), per client address -> address locked.
- ``denials``: 403 refusals of one staff user's bearer token (a stolen token probing what it may do) -> the user is
  disabled (its token locked) until a compliance officer acts.
- ``implausible_reports``, ``copied_ciphertexts``: signed by an enrolled participant's own key, so that participant
  is locked: its submissions are refused, later rounds exclude it, and its update in a round still taking inputs is
  quarantined (withdrawn before the masked sum, as a drop-out secure aggregation recovers).
- ``weight_outliers`` (alert only): an update whose declared n_samples (its weight in the average) is more than
  ``weight_outlier_factor`` times the median of the round's other updates. The cloud never sees an update's norm:
  updates are CKKS-encrypted and pairwise-masked (`cloud.secagg`), and no node proves a plaintext norm, so a
  poisoned update within its declared weight is not detectable here (docs/threat-model.md).

The client address comes from `CLIENT_ADDRESS`, set per request by `cloud.ratelimit.Guard`. Address locks expire;
participant and user locks last until lifted (`lift`: requested by a compliance officer, carried out when a second
person approves it, `cloud.approvals`; audited).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.db import Round, SecAggRound, Update, User, utcnow
from cloud.errors import NotFound
from cloud.intrusion_config import KEY_KINDS, IntrusionConfig
from cloud.record_db import Alert, IntrusionLock, Quarantine, Refusal
from cloud.store import Store, aware

log = logging.getLogger(__name__)

CLIENT_ADDRESS: ContextVar[str] = ContextVar("wearfed_client_address", default="unknown")
MAX_TRACKED = 100_000  # (rule, key) windows and locks kept in memory; the oldest window is dropped past it
@dataclass
class _Window:
    times: deque = field(default_factory=deque)
    first_wall: float = 0.0


class Intrusion:
    def __init__(self, store: Store, cfg: IntrusionConfig) -> None:
        self.store = store
        self.cfg = cfg
        self._windows: dict[tuple[str, str], _Window] = {}
        self._locked: dict[tuple[str, str], tuple[float, str]] = {}  # (kind, key) -> (until monotonic, rule)
        self._mutex = threading.Lock()
        # containment is written off the request thread: a signal may come from inside a caller's transaction,
        # and the in-memory lock already refuses the key's next request
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="intrusion")
        self._load()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every containment signalled so far is written (tests, shutdown)."""
        self._writer.submit(lambda: None).result(timeout=timeout)

    def close(self) -> None:
        self._writer.shutdown(wait=True)

    def _load(self) -> None:
        """Locks still in force after a restart."""
        now_wall, now = utcnow(), time.monotonic()
        with self.store.read() as s:
            for row in s.scalars(select(IntrusionLock).where(IntrusionLock.lifted_by.is_(None))):
                if row.until is None:
                    self._locked[(row.key_kind, row.key)] = (math.inf, row.rule)
                elif aware(row.until) > now_wall:
                    self._locked[(row.key_kind, row.key)] = (now + (aware(row.until) - now_wall).total_seconds(),
                                                             row.rule)

    # -- queries ---------------------------------------------------------------------------------------------
    def locked(self, kind: str, key: str) -> str | None:
        """The rule that locked `key` (of `kind`), if it is locked now."""
        with self._mutex:
            hit = self._locked.get((kind, key))
            if hit is None:
                return None
            if hit[0] <= time.monotonic():
                del self._locked[(kind, key)]
                return None
            return hit[1]

    # -- detection -------------------------------------------------------------------------------------------
    def signal(self, rule: str, key: str | None = None, /, **detail: object) -> bool:
        """Count one observation of `rule` for `key` (default: the request's client address); contain at the
        rule's threshold. True when this observation contained the key."""
        kind = KEY_KINDS[rule]
        key = key if key is not None else CLIENT_ADDRESS.get()
        now = time.monotonic()
        with self._mutex:
            if self._is_locked(kind, key, now):
                return False
            w = self._windows.get((rule, key))
            if w is None:
                w = self._windows[(rule, key)] = _Window()
                while len(self._windows) > MAX_TRACKED:  # a flood of distinct keys cannot grow memory without bound
                    del self._windows[next(iter(self._windows))]
            while w.times and now - w.times[0] > self.cfg.window_s:
                w.times.popleft()
            if not w.times:
                w.first_wall = time.time()
            w.times.append(now)
            count = len(w.times)
            if count < self.cfg.threshold(rule):
                return False
            del self._windows[(rule, key)]
            until = now + self.cfg.address_lock_s if kind == "address" else math.inf
            self._locked[(kind, key)] = (until, rule)  # refused from the next request on, before the write below
            first = w.first_wall
        detected = time.time()
        self._writer.submit(self._contain_logged, rule, kind, key, count=count, first_signal=first,
                            detected=detected, detail=detail)
        return True

    def _contain_logged(self, *args: object, **kwargs: object) -> None:
        try:
            self._contain(*args, **kwargs)
        except Exception:  # the in-memory lock stands; the failed write is logged loudly
            log.exception("intrusion response: writing the containment failed")

    def _is_locked(self, kind: str, key: str, now: float) -> bool:
        hit = self._locked.get((kind, key))
        return hit is not None and hit[0] > now

    # -- containment -----------------------------------------------------------------------------------------
    def _contain(self, rule: str, kind: str, key: str, *, count: int, first_signal: float, detected: float,
                 detail: dict) -> None:
        until = utcnow() + timedelta(seconds=self.cfg.address_lock_s) if kind == "address" else None
        actions = [f"{kind} {key} locked" + (f" for {self.cfg.address_lock_s:g} s" if until else
                                             " until lifted (a compliance officer and a second person)")]
        detail = {k: v for k, v in detail.items() if v is not None}
        with self.store.tx() as s:
            if kind == "user":
                user = s.get(User, key)
                if user is not None and not user.disabled:
                    user.disabled = True
                    actions.append(f"user {key}'s bearer token disabled")
            if kind == "participant":
                actions += self._quarantine_open(s, key, rule)
            s.add(IntrusionLock(key_kind=kind, key=key, rule=rule, detail=detail, until=until))
            info = {"rule": rule, "key_kind": kind, "key": key, "count": count, "window_s": self.cfg.window_s,
                    "threshold": self.cfg.threshold(rule), "actions": actions,
                    "first_signal_at": _iso(first_signal), "contained_at": _iso(detected),
                    "detection_seconds": round(detected - first_signal, 4), **detail}
            s.add(Alert(kind=f"intrusion.{rule}", participant=key if kind == "participant" else None, detail=info))
            self.store.append(s, "intrusion.contained", "cloud", **info, written_at=_iso(time.time()))
        log.warning("intrusion response: %s on %s %s (%d in %g s): %s", rule, kind, key, count, self.cfg.window_s,
                    "; ".join(actions))

    def _quarantine_open(self, s: Session, pid: str, rule: str) -> list[str]:
        """Withdraw `pid` from every round still collecting: its update, while the round takes inputs, moves to
        quarantine (a drop-out for secure aggregation); a recorded refusal lets the round close without it."""
        actions = []
        for r in s.scalars(select(Round).where(Round.state == "collecting")):
            if pid not in (r.expected or []):
                continue
            sa = s.get(SecAggRound, r.id)
            upd = s.scalar(select(Update).where(Update.round_id == r.id, Update.participant == pid))
            if upd is not None and (sa is None or sa.phase == "input"):
                s.add(Quarantine(round_id=r.id, participant=pid, ciphertext_sha256=upd.ciphertext_sha256,
                                 envelope=upd.envelope, rule=rule))
                s.delete(upd)
                actions.append(f"its update to round {r.id} quarantined before the masked sum")
            elif upd is not None:
                actions.append(f"its update to round {r.id} is already in the masked sum (phase {sa.phase}): "
                               "NOT withdrawn; reject that round's candidate")
            refused = s.scalar(select(Refusal).where(Refusal.round_id == r.id, Refusal.participant == pid))
            if (upd is None or sa is None or sa.phase == "input") and refused is None:
                s.add(Refusal(round_id=r.id, participant=pid, reason=f"locked by intrusion response ({rule})"))
                actions.append(f"excluded from round {r.id}")
        return actions

    def quarantine(self, round_id: int, pid: str, *, digest: str, envelope: dict, rule: str) -> None:
        """Keep a refused update's hash and envelope as evidence (never aggregated); written off the request thread."""
        self._writer.submit(self._quarantine, round_id, pid, digest, envelope, rule)

    def _quarantine(self, round_id: int, pid: str, digest: str, envelope: dict, rule: str) -> None:
        with self.store.tx() as s:
            s.add(Quarantine(round_id=round_id, participant=pid, ciphertext_sha256=digest, envelope=envelope,
                             rule=rule))
            self.store.append(s, "intrusion.quarantined", "cloud", round=round_id, participant=pid,
                              ciphertext_sha256=digest, rule=rule)

    def weight_outlier(self, s: Session, round_id: int, pid: str, n_samples: int) -> None:
        """Alert (no lock) when `n_samples` is far above the median of the round's other updates."""
        factor = self.cfg.weight_outlier_factor
        others = sorted(s.scalars(select(Update.n_samples).where(Update.round_id == round_id,
                                                                 Update.participant != pid)))
        if not factor or not others:
            return
        median = others[len(others) // 2]
        if n_samples > factor * median:
            info = {"rule": "weight_outliers", "round": round_id, "participant": pid, "n_samples": n_samples,
                    "median_of_others": median, "factor": factor}
            s.add(Alert(kind="intrusion.weight_outliers", participant=pid, detail=info))
            self.store.append(s, "intrusion.detected", "cloud", **info)

    # -- review ----------------------------------------------------------------------------------------------
    def status(self) -> dict:
        with self.store.read() as s:
            locks = [{"id": r.id, "key_kind": r.key_kind, "key": r.key, "rule": r.rule, "at": aware(r.at).isoformat(),
                      "until": aware(r.until).isoformat() if r.until else None, "lifted_by": r.lifted_by,
                      "detail": r.detail} for r in s.scalars(select(IntrusionLock).order_by(IntrusionLock.id))]
            quarantined = [{"id": q.id, "round": q.round_id, "participant": q.participant, "rule": q.rule,
                            "ciphertext_sha256": q.ciphertext_sha256, "at": aware(q.at).isoformat()}
                           for q in s.scalars(select(Quarantine).order_by(Quarantine.id))]
        return {"config": self.cfg.as_dict(), "locks": locks, "quarantine": quarantined}

    @staticmethod
    def active_lock(s: Session, lock_id: int) -> IntrusionLock:
        row = s.get(IntrusionLock, lock_id)
        if row is None or row.lifted_by is not None:
            raise NotFound(f"no active intrusion lock {lock_id}")
        return row

    def lift(self, s: Session, lock_id: int, *, requested_by: str, approved_by: str, reason: str,
             approval: int) -> dict:
        """Lift a lock inside the transaction that approves it (two-person rule, `cloud.approvals`); a disabled
        user's token works again."""
        row = self.active_lock(s, lock_id)
        row.lifted_by = requested_by
        if row.key_kind == "user" and (user := s.get(User, row.key)) is not None:
            user.disabled = False
        self.store.append(s, "intrusion.lifted", requested_by, lock=lock_id, key_kind=row.key_kind, key=row.key,
                          rule=row.rule, reason=reason, approved_by=approved_by, approval=approval)
        with self._mutex:  # the next request of the key goes through (a failed commit leaves the row locked, and
            self._locked.pop((row.key_kind, row.key), None)  # a restart restores it)
        return {"lifted": lock_id, "key_kind": row.key_kind, "key": row.key}


def _iso(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).isoformat()
