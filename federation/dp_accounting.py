"""DP-SGD privacy accounting as a pure function of (noise_multiplier, sample_rate, steps) history.

Nodes keep the history and send it; the cloud recomputes epsilon from it rather than trusting a number.
Cumulative epsilon composes the whole history in one accountant (not a sum of per-round epsilons).
The accountants are Opacus': PRV (Gopi et al. 2021) and RDP (Mironov 2017; Mironov et al. 2019).
Unit of privacy: whatever the sampled-and-clipped unit was. Nodes sample and clip whole patients (user-level
DP-SGD, `gateway.trainer`), so the same (noise, rate, steps) history gives epsilon per patient; a node that chose
record-level DP-SGD reports per training window, and says so (`UNITS`). Delta is stated with every epsilon.

Entries with the same (noise_multiplier, sample_rate) are merged before accounting: composing a subsampled
Gaussian mechanism n1 times and then n2 times is composing it n1 + n2 times, and composition is order-free,
so the value is the same while PRV's cost stops growing with the number of rounds (measured: 10 rounds 1.34 s
-> 0.12 s, same epsilon). Results are memoised: every participant's and the cloud's checks recompute them; threads
asking for the same history at once wait for one computation (a hospital pool's nodes often share a history).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

ACCOUNTANTS = ("prv", "rdp")
DEFAULT_DELTA = 1e-5
UNITS = ("patient", "window")  # per patient: user-level DP-SGD (the default); per window: record-level, if chosen
DEFAULT_UNIT = "patient"

Step = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps)


@dataclass(frozen=True)
class EpsilonReport:
    value: float
    delta: float
    unit: str
    accountant: str

    def as_dict(self) -> dict:
        return {"value": self.value, "delta": self.delta, "unit": self.unit, "accountant": self.accountant}


def epsilon(history: Sequence[Step], *, delta: float = DEFAULT_DELTA, accountant: str = "prv") -> float:
    """Epsilon at `delta` after all steps in `history`; 0.0 for an empty history."""
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    steps = [(float(s), float(q), int(n)) for s, q, n in history if n > 0]
    for s, q, n in steps:
        if not (s > 0 and 0 < q <= 1):
            raise ValueError(f"invalid DP-SGD step: noise_multiplier={s}, sample_rate={q}, steps={n}")
    if not steps:
        return 0.0
    merged: Counter[tuple[float, float]] = Counter()
    for s, q, n in steps:
        merged[(s, q)] += n
    return _epsilon_merged(tuple(sorted((s, q, n) for (s, q), n in merged.items())), delta, accountant)


_computing: dict[tuple, threading.Lock] = {}  # keys being computed now: concurrent askers wait for the first one
_computing_guard = threading.Lock()


def _epsilon_merged(steps: tuple[Step, ...], delta: float, accountant: str) -> float:
    """Memoised, and computed once however many threads ask at the same time (a pool's nodes share histories)."""
    key = (steps, delta, accountant)
    with _computing_guard:
        lock = _computing.setdefault(key, threading.Lock())
    try:
        with lock:
            return _epsilon_computed(steps, delta, accountant)
    finally:
        with _computing_guard:
            _computing.pop(key, None)


@lru_cache(maxsize=4096)
def _epsilon_computed(steps: tuple[Step, ...], delta: float, accountant: str) -> float:
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = list(steps)
    return float(acc.get_epsilon(delta=delta))
