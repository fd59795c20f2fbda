"""Unauthenticated or malformed refusals (401, 413, 422, 429) counted per window (`FailureTally`) instead of one
audit row per request: one ``access.failures`` entry (totals by status, top addresses and paths) is appended when
its window has passed (`flush_if_due`, from the cloud's ticker) and at shutdown."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

from cloud.throttle import Limits

SUMMARISED = (401, 413, 422, 429)  # refusals of unauthenticated or malformed requests: counted, not logged one by one
Audit = Callable[..., None]  # Store.record(kind, actor, **detail)


class FailureTally:
    """Unauthenticated or malformed refusals counted per window; one audit entry per window that had any."""

    TOP = 20

    def __init__(self, limits: Limits, audit: Audit) -> None:
        self.limits = limits
        self.audit = audit
        self._lock = threading.Lock()
        self._reset(time.time())

    def _reset(self, now: float) -> None:
        self.start = now
        self.total = 0
        self.by_status: Counter = Counter()
        self.by_address: Counter = Counter()
        self.by_path: Counter = Counter()

    def add(self, *, status: int, address: str, path: str) -> None:
        with self._lock:
            self.total += 1
            self.by_status[str(status)] += 1
            for counter, key in ((self.by_address, address), (self.by_path, path[:200])):
                if key in counter or len(counter) < self.limits.max_tracked:
                    counter[key] += 1
                else:
                    counter["(other)"] += 1

    def flush_if_due(self, *, force: bool = False) -> bool:
        """Append the window's ``access.failures`` entry when the window has passed (or `force`); True if written."""
        now = time.time()
        with self._lock:
            if not force and now - self.start < self.limits.summary_window_s:
                return False
            if self.total == 0:
                self._reset(now)
                return False
            detail = {"window_start": _iso(self.start), "window_end": _iso(now), "total": self.total,
                      "by_status": dict(sorted(self.by_status.items())),
                      "top_addresses": self.by_address.most_common(self.TOP),
                      "top_paths": self.by_path.most_common(self.TOP),
                      "distinct_addresses": len(self.by_address), "distinct_paths": len(self.by_path)}
            self._reset(now)
        self.audit("access.failures", "anonymous", **detail)
        return True


def _iso(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).isoformat()
