"""The cloud's front door (one pure ASGI middleware, `Guard`): per-address request rate limits, lockout after repeated
authentication failures, a streaming body-size cap on every route, and refusals counted per window
(`cloud.failure_tally`) instead of written one by one. The counters are in `cloud.throttle`, the caps in
`cloud.body_limits`.

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
`FailureTally`; these refusals write no row of their own.

The client address is what uvicorn puts in the ASGI scope: behind a reverse proxy, run uvicorn with proxy headers
trusted from that proxy only (``FORWARDED_ALLOW_IPS``), or every client shares the proxy's address and its lockout.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time

from cloud.body_limits import BodyTooLarge, body_limit
from cloud.failure_tally import SUMMARISED, Audit, FailureTally
from cloud.intrusion import CLIENT_ADDRESS, Intrusion
from cloud.throttle import Limits, Lockouts, TokenBuckets


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
