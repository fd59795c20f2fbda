"""The attack drill (`wearfed replay attack-drill`): a scripted intrusion against a live federation, timed.

While round `at_round` runs (real broker, gateways and cloud under uvicorn), an attacker on the same host attacks the
cloud, each attack from its own loopback address (127.0.0.2, .3, ...: Linux routes all of 127/8 to lo, so honest
processes on 127.0.0.1 are not caught by an address lock):

- ``token_burst``: guessed bearer tokens against a staff route (credential stuffing);
- ``forged_submission``: a genuine signed update captured on gw-1's plain-HTTP link in an earlier round (the relay's
  tap, `sim.netproxy`), its n_samples raised after signing, posted to the running round;
- ``replayed_submission``: the captured update, unchanged, posted to the running round;
- ``stolen_token``: a data scientist's bearer token (made for the drill through the two-person flow) probing admin
  actions.

Each attack repeats its request until the cloud refuses the attacker (an address lock: 403 "locked by intrusion
response"; a disabled token: 401), at most `max_requests` times. Timed per attack: from just before its first
malicious request to the cloud's ``contained_at`` in the ``intrusion.contained`` audit entry (one clock: same host),
and to the attacker's first refused request. The summary says whether each was contained, audited and alerted, and
the replay's rounds say whether honest participants' rounds completed.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from sim.replay import Replay
    from sim.scenario import AttackDrill

DRILL_USER = "drill-analyst"  # the data scientist whose token the drill "steals"
STUDY_SECONDS = 3.4  # the secure-deployment study's containment time (Jasthi 2025), the figure to beat
_REQUEST = re.compile(rb"POST /v1/rounds/(\d+)/updates HTTP/1\.1\r\n(.*?)\r\n\r\n", re.S)


class Capture:
    """Reassembles HTTP/1.1 submission requests from a relay's upstream bytes; keeps the newest complete body."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._lock = threading.Lock()
        self.latest: dict | None = None

    def __call__(self, chunk: bytes) -> None:
        with self._lock:
            self._buf += chunk
            while (m := _REQUEST.search(self._buf)) is not None:
                length = next((int(v) for k, v in (h.split(b":", 1) for h in m.group(2).split(b"\r\n") if b":" in h)
                               if k.strip().lower() == b"content-length"), None)
                end = m.end() + (length or 0)
                if length is None or len(self._buf) < end:
                    if len(self._buf) > 64 * 1024 * 1024:  # never grows without bound
                        del self._buf[:m.start()]
                    return
                with contextlib.suppress(ValueError):
                    self.latest = json.loads(bytes(self._buf[m.end():end]))
                del self._buf[:end]
            if len(self._buf) > 1024 * 1024:  # no request start in sight: keep only a tail
                del self._buf[:-4096]


@dataclass
class AttackResult:
    name: str
    address: str
    requests: int = 0
    statuses: list[int] = field(default_factory=list)
    first_request_at: float | None = None
    refused_at: float | None = None  # the attacker's first refused request (its response time)

    def as_dict(self, entry: dict | None) -> dict:
        contained_at = _epoch(entry["contained_at"]) if entry else None
        out = {"attack": self.name, "address": self.address, "requests": self.requests, "statuses": self.statuses,
               "contained": entry is not None, "rule": entry["rule"] if entry else None,
               "actions": entry["actions"] if entry else None,
               "containment_seconds": round(contained_at - self.first_request_at, 4)
               if entry and self.first_request_at else None,
               "refused_after_seconds": round(self.refused_at - self.first_request_at, 4)
               if self.refused_at and self.first_request_at else None}
        return out


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


class Drill:
    def __init__(self, replay: Replay, cfg: AttackDrill) -> None:
        self.replay = replay
        self.cfg = cfg
        self.capture = Capture()
        self.results: list[AttackResult] = []
        self.error: str | None = None
        self._thread: threading.Thread | None = None
        self.round_id: int | None = None

    # -- set-up ----------------------------------------------------------------------------------------------
    def arm(self) -> None:
        """Tap gw-1's link to the cloud and make the data scientist whose token will be stolen."""
        target = self.cfg.tap_gateway or self.replay.s.gateways[0].id
        self.replay.relays[target]["cloud"].tap = self.capture
        secret = self.replay._approved(self.replay.staff["admin"].post(
            "/v1/users", json={"name": DRILL_USER, "role": "data_scientist"}))
        self.stolen_token = secret["token"]

    def start(self, after_round: int) -> None:
        """Run the attacks in a thread once the round after `after_round` collects."""
        self._thread = threading.Thread(target=self._run, args=(after_round,), name="attack-drill", daemon=True)
        self._thread.start()

    def join(self, timeout: float = 300) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the attacks -----------------------------------------------------------------------------------------
    def _run(self, after_round: int) -> None:
        try:
            self._wait_for_round(after_round)
            if self.capture.latest is None:
                raise RuntimeError("no submission was captured on the tapped link before the drill's round")
            for k, name in enumerate(self.cfg.attacks, start=2):
                self.results.append(ATTACKS[name](self, f"127.0.0.{k}"))
        except Exception as exc:  # the report says so; the replay's rounds go on
            self.error = f"{type(exc).__name__}: {exc}"

    def _wait_for_round(self, after_round: int) -> None:
        admin = self.replay.staff["admin"]
        deadline = time.time() + 600
        while time.time() < deadline:
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                cur = admin.get("/v1/rounds/current").json()
                if cur["round"] > after_round and cur["state"] == "collecting":
                    self.round_id = cur["round"]
                    return
            time.sleep(0.1)
        raise TimeoutError("the drill's round never started collecting")

    def _attack(self, name: str, address: str, send: Callable[[httpx.Client], httpx.Response],
                refused: Callable[[httpx.Response], bool]) -> AttackResult:
        res = AttackResult(name, address)
        transport = httpx.HTTPTransport(local_address=address)
        with httpx.Client(base_url=self.replay.cloud_url, transport=transport, timeout=30) as client:
            res.first_request_at = time.time()
            for _ in range(self.cfg.max_requests):
                resp = send(client)
                res.requests += 1
                res.statuses.append(resp.status_code)
                if refused(resp):
                    res.refused_at = time.time()
                    break
        return res

    def _submission(self, *, tamper: bool) -> dict:
        body = json.loads(json.dumps(self.capture.latest))
        if tamper:
            body["envelope"]["n_samples"] = int(body["envelope"]["n_samples"]) * 1000  # signature no longer fits
        return body


def _locked(resp: httpx.Response) -> bool:
    return resp.status_code == 403 and "locked by intrusion response" in resp.text


def _token_burst(d: Drill, address: str) -> AttackResult:
    counter = iter(range(10**9))
    return d._attack("token_burst", address,
                     lambda c: c.get("/v1/participants", headers={"Authorization": f"Bearer wf_guess{next(counter)}"}),
                     _locked)


def _forged_submission(d: Drill, address: str) -> AttackResult:
    body = d._submission(tamper=True)
    return d._attack("forged_submission", address, lambda c: c.post(f"/v1/rounds/{d.round_id}/updates", json=body),
                     _locked)


def _replayed_submission(d: Drill, address: str) -> AttackResult:
    body = d._submission(tamper=False)
    return d._attack("replayed_submission", address,
                     lambda c: c.post(f"/v1/rounds/{d.round_id}/updates", json=body), _locked)


def _stolen_token(d: Drill, address: str) -> AttackResult:
    headers = {"Authorization": f"Bearer {d.stolen_token}"}
    counter = iter(range(10**9))
    return d._attack("stolen_token", address,
                     lambda c: c.post("/v1/users", json={"name": f"backdoor-{next(counter)}", "role": "admin"},
                                      headers=headers),
                     lambda r: r.status_code == 401 or _locked(r))


ATTACKS: dict[str, Callable[[Drill, str], AttackResult]] = {
    "token_burst": _token_burst, "forged_submission": _forged_submission,
    "replayed_submission": _replayed_submission, "stolen_token": _stolen_token}
KEYS = {"token_burst": "address", "forged_submission": "address", "replayed_submission": "address",
        "stolen_token": "user"}


def report(d: Drill) -> dict:
    """What the drill did, what the cloud contained and audited, and the containment times."""
    co = d.replay.staff["compliance_officer"]
    entries = co.get("/v1/audit/entries", params={"limit": 10_000}).json()
    start = 0
    while len(entries) == 10_000 * (start + 1):  # page on (long replays)
        start += 1
        entries += co.get("/v1/audit/entries", params={"start": 10_000 * start, "limit": 10_000}).json()
    contained = [e["detail"] for e in entries if e["kind"] == "intrusion.contained"]
    alerts = [a for a in co.get("/v1/privacy/alerts").json() if str(a.get("kind", "")).startswith("intrusion.")]
    attacks = []
    for res in d.results:
        key = DRILL_USER if KEYS[res.name] == "user" else res.address
        entry = next((c for c in contained if c["key"] == key), None)
        row = res.as_dict(entry)
        row["audited"] = entry is not None
        row["alerted"] = any(a["detail"].get("key") == key for a in alerts)
        attacks.append(row)
    times = [a["containment_seconds"] for a in attacks if a["containment_seconds"] is not None]
    return {"round": d.round_id, "error": d.error, "attacks": attacks,
            "contained_all": bool(attacks) and d.error is None and all(a["contained"] and a["audited"] and
                                                                       a["alerted"] for a in attacks),
            "containment_seconds_max": max(times) if times else None,
            "containment_seconds_median": sorted(times)[len(times) // 2] if times else None,
            "study_seconds": STUDY_SECONDS, "goal_seconds": 1.0,
            "clock": "one host: the attacker's time before its first request vs the cloud's contained_at"}
