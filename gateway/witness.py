"""A participant's witness of the cloud's audit log: keep the last signed checkpoint seen, and on each check ask the
cloud for its newest checkpoint and an RFC 9162 consistency proof from the kept one. A checkpoint that is smaller
(rollback), differs at the same size, does not extend the kept tree (fork), is not signed by the log key, or comes
under another key stops the node loudly: an alarm file ``log-witness-ALARM.json`` in the state directory, a critical
log line, `LogWitnessAlarm` raised, and every later check (also after a restart) raises again until an operator
has investigated and removed the alarm file.

The log key is pinned by ``--log-key`` (base64 Ed25519, from the cloud operator out of band) or trusted on first use
and kept with the checkpoint (``log-witness.json``). Checks run at most every `interval_s`, and always when the node
is about to answer a round (`check(..., force=True)`), so no update goes to a cloud whose log forked.

After a check that verified, a node with its participant key acknowledges what it verified, signed
(``POST /v1/log/witness``: tree size and root, `federation.node_signals.WITNESS_DOMAIN`): on every forced check and
otherwise at most every `ack_interval_s`. The cloud raises an alert on (and can hold) updates from a participant
whose last acknowledgement is stale (`cloud.witnesses`): a node that stops checking is seen. A failed
acknowledgement never stops the node; its next forced check sends another.

Endpoints (public, rate-limited at the cloud): ``GET /v1/log/checkpoint`` and
``GET /v1/log/consistency?old_size=M&new_size=N``; ``POST /v1/log/witness`` (signed by the participant).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from federation.checkpoint import Checkpoint, verify_checkpoint
from federation.errors import SchemaError
from federation.merkle import VerificationError, verify_consistency
from federation.node_signals import WITNESS_DOMAIN, signed
from federation.responses import ConsistencyProof, WitnessAckResults
from federation.runtime import atomic_write_json
from gateway.cloud_client import CloudClient
from gateway.errors import CloudRejected, GatewayError

log = logging.getLogger(__name__)
ORIGIN = "wearfed.cloud/audit-log"
STATE_FILE = "log-witness.json"
ALARM_FILE = "log-witness-ALARM.json"


class LogWitnessAlarm(GatewayError):
    """The cloud's audit log forked, rolled back, or is signed by another key: this node stops."""


@dataclass(frozen=True)
class Seen:
    public_key: str
    tree_size: int
    root_hex: str
    body: str
    signature: str
    at: float


class LogWitness:
    def __init__(self, state_dir: Path, *, node_id: str, pinned_key: str | None = None,
                 interval_s: float = 5.0, key: Ed25519PrivateKey | None = None, ack_interval_s: float = 300.0) -> None:
        self.node_id = node_id
        self.path = state_dir / STATE_FILE
        self.alarm_path = state_dir / ALARM_FILE
        self.pinned_key = pinned_key
        self.interval_s = interval_s
        self.seen = self._load()
        self.checks = 0
        self._last_check = 0.0
        self.key = key  # the participant key that signs acknowledgements; None: this node acknowledges nothing
        self.ack_interval_s = ack_interval_s
        self.acked_size: int | None = None
        self._last_ack = -float("inf")

    def _load(self) -> Seen | None:
        if not self.path.exists():
            return None
        return Seen(**json.loads(self.path.read_text()))

    def status(self) -> dict:
        alarm = json.loads(self.alarm_path.read_text()) if self.alarm_path.exists() else None
        return {"log_witness": {"tree_size": self.seen.tree_size if self.seen else None,
                                "root": self.seen.root_hex if self.seen else None, "checks": self.checks,
                                "acknowledged_tree_size": self.acked_size, "alarm": alarm}}

    async def check(self, cloud: CloudClient, *, force: bool = False) -> bool:
        """Check the cloud's newest checkpoint against the kept one. True when checked (or checked recently),
        False when the cloud could not be reached; raises `LogWitnessAlarm` on a fork or rollback."""
        if self.alarm_path.exists():
            raise LogWitnessAlarm(f"the cloud's audit log was found forked or rolled back earlier "
                                  f"({self.alarm_path}); this node answers no rounds until an operator removes it")
        if not force and time.monotonic() - self._last_check < self.interval_s:
            return True
        try:
            doc = (await cloud.request("GET", "/v1/log/checkpoint")).json()
            new = self._verified(doc)
            proof: list[bytes] = []
            if self.seen is not None and self.seen.tree_size < new.tree_size:
                resp = await cloud.request("GET", "/v1/log/consistency",
                                           params={"old_size": self.seen.tree_size, "new_size": new.tree_size})
                proof = [bytes.fromhex(h) for h in ConsistencyProof.model_validate(resp.json()).proof]
        except (httpx.TransportError, httpx.HTTPStatusError, GatewayError, ValueError, KeyError) as exc:
            if isinstance(exc, LogWitnessAlarm):
                raise
            log.warning("%s: could not check the cloud's log (%s)", self.node_id, exc)
            return False
        self._extends(new, proof)
        self.seen = new
        atomic_write_json(self.path, new.__dict__)
        self.checks += 1
        self._last_check = time.monotonic()
        await self.acknowledge(cloud, new, force=force)
        return True

    async def acknowledge(self, cloud: CloudClient, seen: Seen, *, force: bool = False) -> None:
        """Tell the cloud this node verified `seen` (signed): when forced, else at most every `ack_interval_s`. The
        nodes of a pool sharing one witness (`gateway.pool`) acknowledge together (`acknowledge_together`)."""
        if not self.ack_due(force=force):
            return
        try:
            await cloud.request("POST", "/v1/log/witness", json=self.ack_body(seen))
        except CloudRejected as exc:
            self.ack_refused(seen, str(exc))
        except (httpx.TransportError, httpx.HTTPStatusError) as exc:
            log.warning("%s: checkpoint acknowledgement not delivered (%s)", self.node_id, exc)
        else:
            self.acked(seen)

    def ack_due(self, *, force: bool) -> bool:
        return self.key is not None and (force or time.monotonic() - self._last_ack >= self.ack_interval_s)

    def ack_body(self, seen: Seen) -> dict:
        assert self.key is not None
        body = {"participant": self.node_id, "tree_size": seen.tree_size, "root": seen.root_hex,
                "checked_at": round(seen.at, 3)}
        return signed(self.key, body, WITNESS_DOMAIN)

    def acked(self, seen: Seen) -> None:
        self.acked_size, self._last_ack = seen.tree_size, time.monotonic()

    def ack_refused(self, seen: Seen, reason: str) -> None:  # 409: the cloud disowns the checkpoint: look into it
        log.error("%s: the cloud refused the acknowledgement of checkpoint %d: %s", self.node_id, seen.tree_size,
                  reason)

    def _verified(self, doc: dict) -> Seen:
        key_b64 = str(doc.get("public_key", ""))
        trusted = self.pinned_key or (self.seen.public_key if self.seen else None)
        if trusted is not None and key_b64 != trusted:
            self._alarm("key", f"the log is now signed by key {key_b64}, not by {trusted}")
        try:
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(trusted or key_b64, validate=True))
            cp = Checkpoint.from_body(str(doc["body"]).encode())
            verify_checkpoint(cp, base64.b64decode(str(doc["signature"]), validate=True), key)
        except (SchemaError, VerificationError, ValueError) as exc:
            self._alarm("signature", f"the cloud's checkpoint does not verify under the log key: {exc}")
        if cp.origin != ORIGIN:
            self._alarm("origin", f"checkpoint of log {cp.origin!r}, expected {ORIGIN!r}")
        return Seen(public_key=trusted or key_b64, tree_size=cp.tree_size, root_hex=cp.root_hash.hex(),
                    body=str(doc["body"]), signature=str(doc["signature"]), at=time.time())

    def _extends(self, new: Seen, proof: list[bytes]) -> None:
        old = self.seen
        if old is None:
            log.info("%s: witnessing the cloud's log from %d entries (root %s)", self.node_id, new.tree_size,
                     new.root_hex)
            return
        if new.tree_size < old.tree_size:
            self._alarm("rollback", f"the log shrank from {old.tree_size} to {new.tree_size} entries")
        try:
            verify_consistency(old_size=old.tree_size, new_size=new.tree_size, old_root=bytes.fromhex(old.root_hex),
                               new_root=bytes.fromhex(new.root_hex), proof=proof)
        except VerificationError as exc:
            self._alarm("fork", f"the log of {new.tree_size} entries does not extend the one of {old.tree_size} "
                                f"this node saw: {exc}")

    def _alarm(self, kind: str, message: str) -> None:
        doc = {"kind": kind, "message": message, "at": time.time(), "node": self.node_id,
               "last_seen": self.seen.__dict__ if self.seen else None}
        atomic_write_json(self.alarm_path, doc, indent=1)
        log.critical("%s: AUDIT LOG %s: %s; this node stops answering rounds (%s)", self.node_id, kind.upper(),
                     message, self.alarm_path)
        raise LogWitnessAlarm(f"audit log {kind}: {message}")


async def acknowledge_together(due: list[tuple[LogWitness, bool]], seen: Seen, cloud: CloudClient) -> None:
    """Each (witness, forced) that is due acknowledges `seen` in one request (`POST /v1/log/witness/batch`); if the
    cloud refuses the batch whole, each acknowledges on its own."""
    witnesses = [w for w, force in due if w.ack_due(force=force)]
    if not witnesses:
        return
    try:
        body = {"acks": [w.ack_body(seen) for w in witnesses]}
        resp = await cloud.request("POST", "/v1/log/witness/batch", json=body)
        results = WitnessAckResults.model_validate(resp.json()).results
        if [r.participant for r in results] != [w.node_id for w in witnesses]:
            raise ValueError("the cloud's results do not answer the batch in order")
    except (CloudRejected, ValueError) as exc:
        log.warning("%d acknowledgements refused together (%s); sending one by one", len(witnesses), exc)
        for w in witnesses:
            await w.acknowledge(cloud, seen, force=True)
        return
    except (httpx.TransportError, httpx.HTTPStatusError) as exc:
        log.warning("checkpoint acknowledgements not delivered (%s)", exc)
        return
    for w, r in zip(witnesses, results, strict=True):
        if r.status == 200:
            w.acked(seen)
        else:
            w.ack_refused(seen, f"{r.status}: {r.detail}")
