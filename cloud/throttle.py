"""Per-key counters of the front door (`cloud.ratelimit.Guard`): a token bucket per client address
(`TokenBuckets`) and authentication failures per address or token prefix in a sliding window, locking the key past
the limit (`Lockouts`). Memory is bounded: at most `Limits.max_tracked` keys per table, the least recently touched
dropped first."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    requests_per_s: float = 500.0  # per client address; 0 turns the rate limit off
    burst: int = 1000
    auth_failures: int = 20  # within failure_window_s, before the address (or token) is locked
    failure_window_s: float = 60.0
    lockout_s: float = 300.0
    summary_window_s: float = 60.0  # one access.failures entry per window with any failure
    max_tracked: int = 100_000  # addresses / tokens tracked per table (memory bound)


class _Bounded(OrderedDict):
    """A dict that forgets its least recently touched keys past `cap`."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    def touch(self, key: object, default: Callable[[], object]) -> object:
        if key in self:
            self.move_to_end(key)
        else:
            self[key] = default()
            while len(self) > self.cap:
                self.popitem(last=False)
        return self[key]


class Lockouts:
    """Authentication failures per key (address or token prefix) in a sliding window; locks past the limit."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._failures = _Bounded(limits.max_tracked)  # key -> [window start, count]
        self._locked = _Bounded(limits.max_tracked)  # key -> until (monotonic)
        self._lock = threading.Lock()

    def locked_for(self, key: tuple, now: float) -> float:
        """Seconds left on `key`'s lock (0 when not locked)."""
        with self._lock:
            until = self._locked.get(key)
            if until is None:
                return 0.0
            if until <= now:
                del self._locked[key]
                return 0.0
            return until - now

    def failure(self, key: tuple, now: float) -> int | None:
        """Count one failure; the number of failures when this one locks the key, else None."""
        with self._lock:
            window = self._failures.touch(key, lambda: [now, 0])
            if now - window[0] > self.limits.failure_window_s:
                window[0], window[1] = now, 0
            window[1] += 1
            if window[1] < self.limits.auth_failures:
                return None
            count = window[1]
            del self._failures[key]
            self._locked.touch(key, lambda: 0.0)
            self._locked[key] = now + self.limits.lockout_s
            return count


class TokenBuckets:
    """A token bucket per client address (rate `requests_per_s`, capacity `burst`)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._buckets = _Bounded(limits.max_tracked)  # address -> [tokens, last]
        self._lock = threading.Lock()

    def wait(self, key: str, now: float) -> float:
        """0 if a request may pass now (and take a token), else the seconds until one may."""
        rate = self.limits.requests_per_s
        if rate <= 0:
            return 0.0
        with self._lock:
            b = self._buckets.touch(key, lambda: [float(self.limits.burst), now])
            b[0] = min(float(self.limits.burst), b[0] + (now - b[1]) * rate)
            b[1] = now
            if b[0] >= 1.0:
                b[0] -= 1.0
                return 0.0
            return (1.0 - b[0]) / rate
