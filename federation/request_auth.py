"""Signed reads: an enrolled participant proves who it is on a GET with its Ed25519 identity, so the cloud can show it
what anonymous callers must not see (whether it is expected in a round, candidate models to evaluate).

Header: ``Authorization: Wearfed-Participant id=<participant>, ts=<unix seconds>, sig=<base64>``, where the signature
(domain ``wearfed/request/v1``) covers the canonical JSON of {method, path, query, ts, id}. The cloud accepts a
timestamp within `MAX_SKEW_S` of its own clock. A captured header can be replayed only within that window and only
for the same method, path and query: reads change nothing, and what they return travels to whoever holds the
connection (use TLS).
"""

from __future__ import annotations

import re
import time
from collections.abc import Generator

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.errors import SignatureError
from federation.signing import sign, verify

REQUEST_DOMAIN = b"wearfed/request/v1\n"
SCHEME = "Wearfed-Participant"
MAX_SKEW_S = 300.0
_HEADER = re.compile(rf"^{SCHEME} id=([a-z0-9][a-z0-9._-]{{0,62}}), ts=(\d{{1,12}}), sig=([A-Za-z0-9+/=]{{1,100}})$")


def signed_doc(*, method: str, path: str, query: str, ts: int, participant: str) -> dict:
    return {"method": method.upper(), "path": path, "query": query, "ts": ts, "id": participant}


def header(key: Ed25519PrivateKey, participant: str, *, method: str, path: str, query: str = "",
           now: float | None = None) -> str:
    ts = int(time.time() if now is None else now)
    doc = signed_doc(method=method, path=path, query=query, ts=ts, participant=participant)
    return f"{SCHEME} id={participant}, ts={ts}, sig={sign(key, doc, domain=REQUEST_DOMAIN)}"


def parse(value: str) -> tuple[str, int, str] | None:
    """(participant, ts, signature) of a participant Authorization header, or None if it is not one."""
    m = _HEADER.match(value.strip())
    return (m.group(1), int(m.group(2)), m.group(3)) if m else None


def check(public_key: str, participant: str, ts: int, signature: str, *, method: str, path: str, query: str,
          now: float | None = None) -> None:
    """Raise SignatureError unless the signature is fresh and by `public_key` over this request."""
    now = time.time() if now is None else now
    if abs(now - ts) > MAX_SKEW_S:
        raise SignatureError(f"signed request timestamp {ts} is more than {MAX_SKEW_S:.0f} s from the cloud's clock")
    verify(public_key, signed_doc(method=method, path=path, query=query, ts=ts, participant=participant), signature,
           domain=REQUEST_DOMAIN)


class ParticipantAuth(httpx.Auth):
    """httpx auth that signs every GET as the participant (other requests carry signed bodies already)."""

    def __init__(self, key: Ed25519PrivateKey, participant: str) -> None:
        self.key = key
        self.participant = participant

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if request.method == "GET":
            request.headers["Authorization"] = header(self.key, self.participant, method="GET",
                                                      path=request.url.path, query=request.url.query.decode())
        yield request
