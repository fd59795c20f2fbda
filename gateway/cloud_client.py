"""HTTP client to the cloud aggregator: retries on connection errors and 5xx with exponential backoff and full
jitter (`federation.runtime.Backoff`), `CloudRejected` on 4xx (httpx). Over https the cloud's certificate is checked
against the system's CAs, or only against `ca_file` (a PEM bundle: the deployment's own CA) when one is given; a
certificate that does not verify is refused at once (`httpx.ConnectError`, CERTIFICATE_VERIFY_FAILED), not retried."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx

from federation.responses import refusal_detail
from federation.runtime import Backoff
from federation.tls import certificate_refused, tls_context
from gateway.errors import CloudRejected

log = logging.getLogger(__name__)
RETRY = Backoff(base_s=0.2, cap_s=10.0)

__all__ = ["CloudClient", "CloudRejected"]


class CloudClient:
    def __init__(self, base_url: str, *, timeout: float = 30.0, attempts: int = 8, ca_file: Path | None = None,
                 auth: httpx.Auth | None = None) -> None:
        """`ca_file`: the cloud's CA bundle (https); `auth`: e.g. `federation.request_auth.ParticipantAuth`, so the
        node's reads are signed."""
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout, verify=tls_context(ca_file),
                                       auth=auth)
        self._attempts = attempts

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        """Send with retries on connection errors and 5xx; raise CloudRejected on 4xx."""
        for attempt in range(1, self._attempts + 1):
            delay = RETRY.delay(attempt - 1)
            try:
                resp = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self._attempts or certificate_refused(exc):
                    raise
                log.warning("%s %s failed (%s); retry %d in %.1fs", method, path, exc, attempt, delay)
            else:
                if resp.status_code < 400:
                    return resp
                if resp.status_code < 500:
                    raise CloudRejected(resp.status_code, refusal_detail(resp))
                if attempt == self._attempts:
                    resp.raise_for_status()
                log.warning("%s %s got %d; retry %d in %.1fs", method, path, resp.status_code, attempt, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")
