"""HTTP client to the cloud aggregator with retries and exponential backoff (httpx)."""

from __future__ import annotations

import asyncio
import logging
import random

import httpx

log = logging.getLogger(__name__)


class CloudRejected(Exception):
    """The cloud answered 4xx: retrying would not help. Carries the status and the cloud's reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


class CloudClient:
    def __init__(self, base_url: str, *, timeout: float = 30.0, attempts: int = 8) -> None:
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout)
        self._attempts = attempts

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        """Send with retries on connection errors and 5xx; raise CloudRejected on 4xx."""
        delay = 0.2
        for attempt in range(1, self._attempts + 1):
            try:
                resp = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self._attempts:
                    raise
                log.warning("%s %s failed (%s); retry %d in %.1fs", method, path, exc, attempt, delay)
            else:
                if resp.status_code < 400:
                    return resp
                if resp.status_code < 500:
                    try:
                        reason = resp.json().get("detail", resp.text)
                    except ValueError:
                        reason = resp.text
                    raise CloudRejected(resp.status_code, str(reason))
                if attempt == self._attempts:
                    resp.raise_for_status()
                log.warning("%s %s got %d; retry %d in %.1fs", method, path, resp.status_code, attempt, delay)
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")
