"""The cloud's front door (one pure ASGI middleware, `Guard`): per-address request rate limits, lockout after repeated
authentication failures, a streaming body-size cap on every route, and a count of unauthenticated failures that is
written to the audit log once per window instead of once per request.

Order per request: locked address or bearer token -> 429 (with Retry-After), before any other work; token bucket of
the client address (`Limits.requests_per_s`, `burst`) -> 429; declared Content-Length over the route's cap -> 413
before a byte of the body is read; otherwise the body is passed on while it is counted, and the first chunk past the
cap raises `BodyTooLarge` (a 413 HTTPException, so FastAPI's body parsing re-raises it), so at most the cap is ever
buffered, chunked bodies included. After the response: a 401 anywhere, or a 403 of an enrollment (a bad one-time
token), counts as an authentication failure of the client address and of the bearer token's SHA-256 prefix; `Limits.
auth_failures` of them within `failure_window_s` lock that key for `lockout_s` (one ``access.locked`` audit entry per
lock). Before all of that, an address locked by intrusion response (`cloud.intrusion`) is refused (403), and every
401 is signalled to it (rule ``auth_failures``, usually the first to fire); the request's address is put in
`cloud.intrusion.CLIENT_ADDRESS` for the signals of the units behind. Every 401, 413, 422 and 429 is counted in
`FailureTally`, whose ``access.failures`` entry (totals by status,
top addresses and paths) is appended when its window has passed (`flush_if_due`, from the cloud's ticker) and at
shutdown; these refusals write no row of their own. Memory is bounded: at most `Limits.max_tracked` keys per table,
the oldest dropped first.

The client address is what uvicorn puts in the ASGI scope: behind a reverse proxy, run uvicorn with proxy headers
trusted from that proxy only (``FORWARDED_ALLOW_IPS``), or every client shares the proxy's address and its lockout.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.exceptions import HTTPException

from cloud.intrusion import CLIENT_ADDRESS, Intrusion
from federation.limits import MAX_REGION_AGGREGATE_BYTES, MAX_REGION_INPUTS_BYTES
from federation.wire import MAX_UPDATE_BYTES

DEFAULT_BODY_LIMIT = 64 * 1024  # every JSON request but a submission is far smaller (the largest: a drift report)
BODY_LIMITS = ((re.compile(r"^/v1/rounds/[^/]+/updates$"), MAX_UPDATE_BYTES),
               (re.compile(r"^/v1/rounds/[^/]+/region-aggregates$"), MAX_REGION_AGGREGATE_BYTES),
               (re.compile(r"^/v1/rounds/[^/]+/region-aggregates/[^/]+/inputs$"), MAX_REGION_INPUTS_BYTES))
SUMMARISED = (401, 413, 422, 429)  # refusals of unauthenticated or malformed requests: counted, not logged one by one
Audit = Callable[..., None]  # Store.record(kind, actor, **detail)


@dataclass(frozen=True)
class Limits:
    requests_per_s: float = 500.0  # per client address; 0 turns the rate limit off
    burst: int = 1000
    auth_failures: int = 20  # within failure_window_s, before the address (or token) is locked
    failure_window_s: float = 60.0
    lockout_s: float = 300.0
    summary_window_s: float = 60.0  # one access.failures entry per window with any failure
    max_tracked: int = 100_000  # addresses / tokens tracked per table (memory bound)


class BodyTooLarge(HTTPException):
    """The request body passed the route's cap while it was being read."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


def body_limit(path: str) -> int:
    for pattern, limit in BODY_LIMITS:
        if pattern.match(path):
            return limit
    return DEFAULT_BODY_LIMIT


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


class Guard:
    """The ASGI middleware; `cloud` is the assembled cloud (its store audits locks and summaries)."""

    def __init__(self, app, *, limits: Limits, tally: FailureTally, audit: Audit,  # noqa: ANN001
                 intrusion: Intrusion | None = None) -> None:
        self.app = app
        self.intrusion = intrusion
        self.limits = limits
        self.lockouts = Lockouts(limits)
        self.buckets = TokenBuckets(limits)
        self.tally = tally
        self.audit = audit

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001 - the ASGI protocol
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        address = (scope.get("client") or ("unknown",))[0]
        token = _bearer(scope)
        keys = [("address", address)] + ([("token", token)] if token else [])
        CLIENT_ADDRESS.set(address)
        if self.intrusion is not None and (rule := self.intrusion.locked("address", address)) is not None:
            return await self._refuse(send, 403, f"address {address} is locked by intrusion response ({rule})",
                                      address, path)
        now = time.monotonic()
        left = max(self.lockouts.locked_for(k, now) for k in keys)
        if left > 0:
            return await self._refuse(send, 429, f"too many authentication failures: locked for {math.ceil(left)} s",
                                      address, path, retry_after=left)
        wait = self.buckets.wait(address, now)
        if wait > 0:
            return await self._refuse(send, 429, f"rate limit of {self.limits.requests_per_s:g} requests/s per "
                                                 "address exceeded", address, path, retry_after=wait)
        limit = body_limit(path)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            return await self._refuse(send, 413, f"request body of {declared} bytes exceeds {limit} bytes",
                                      address, path)
        received = 0

        async def counted_receive():  # noqa: ANN202
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        status = 0

        async def watched_send(message) -> None:  # noqa: ANN001
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self._observe(status, address, path)  # counted before the client can see the answer
            await send(message)

        await self.app(scope, counted_receive, watched_send)
        await self._after(status, scope, keys, address, path)

    def _observe(self, status: int, address: str, path: str) -> None:
        if status in SUMMARISED:
            self.tally.add(status=status, address=address, path=path)
        if status == 401 and self.intrusion is not None:
            self.intrusion.signal("auth_failures", address, path=path[:200])

    async def _after(self, status: int, scope: dict, keys: list[tuple], address: str, path: str) -> None:
        enrollment = status == 403 and scope.get("method") == "POST" and path == "/v1/participants"
        if status != 401 and not enrollment:
            return
        now = time.monotonic()
        for key in keys:
            count = self.lockouts.failure(key, now)
            if count is not None:
                await asyncio.to_thread(self.audit, "access.locked", "cloud", key_kind=key[0], key=key[1],
                                        failures=count, window_s=self.limits.failure_window_s,
                                        locked_s=self.limits.lockout_s)

    async def _refuse(self, send, status: int, reason: str, address: str, path: str, *,  # noqa: ANN001
                      retry_after: float | None = None) -> None:
        self.tally.add(status=status, address=address, path=path)
        body = json.dumps({"detail": reason}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if retry_after is not None:
            headers.append((b"retry-after", str(max(1, math.ceil(retry_after))).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _bearer(scope: dict) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return hashlib.sha256(value[7:].strip()).hexdigest()[:16]
    return None


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
