"""A region relay (hierarchical aggregation, `federation.region`): a separate party, e.g. a regional health
authority, that takes its participants' signed, masked, CKKS-encrypted submissions, sums them (public context only)
and forwards one signed aggregate per batch to the cloud, with each participant's signed envelope.

It reads no update (it holds no secret key, and the inputs are masked by secure aggregation before encryption). It
takes a submission only if: the envelope names this region, the participant is enrolled (its key from the cloud,
`GET /v1/regions/{id}/participant-keys`, a signed read) and allowed (`members`, if configured), the signature
verifies, the round is the cloud's current round taking masked inputs, the ciphertext hashes as signed and parses as
masked residues of the model's length, and the participant has not sent another update to this round. The
submission is on disk (`<state dir>/inputs/round-<id>/<participant>.json`) before it is acknowledged, so a restarted
relay forwards what it acknowledged. A batch goes to the cloud once every configured member has submitted, or
`flush_after_s` after its oldest submission; a participant arriving later goes in a later batch (the cloud takes
disjoint batches of one region). When the cloud audits a batch, the relay posts every input of it, signed.

This module takes, keeps and batches submissions; the cloud side is `cloud.region_relay_cloud`, the configuration
`cloud.region_relay_config`, the HTTP server `cloud.region_relay_app`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field

import httpx

from cloud.region_relay_cloud import CloudLink
from cloud.region_relay_config import Refused, RelayConfig
from federation import ckks, model, region
from federation.errors import SignatureError
from federation.limits import MAX_UPDATE_BYTES
from federation.responses import SubmissionAck
from federation.runtime import atomic_write_json
from federation.signing import verify
from federation.wire import Submission

log = logging.getLogger(__name__)


@dataclass
class _Input:
    body: dict  # the participant's Submission as received
    blob: bytes
    arrived: float


@dataclass
class _Round:
    pending: dict[str, _Input] = field(default_factory=dict)
    forwarded: dict[str, str] = field(default_factory=dict)  # participant -> idempotency key
    refused: dict[str, str] = field(default_factory=dict)  # participant -> why the cloud refused its batch
    batches: list[dict] = field(default_factory=list)


class RegionRelay:
    def __init__(self, cfg: RelayConfig) -> None:
        self.cfg = cfg
        self.cloud = CloudLink(cfg)
        self.key = self.cloud.key
        self.ctx = None
        self.keys: dict[str, str] = {}
        self.rounds: dict[int, _Round] = {}
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self.inputs_dir = cfg.state_dir / "inputs"

    async def start(self) -> None:
        """Enroll once, load the context, fetch the participants' keys and whatever was acknowledged before a
        restart."""
        self.ctx, binding = await self.cloud.enroll()
        await self.refresh_keys()
        self._reload()
        log.info("region %s relays to %s (CKKS key %s pinned)", self.cfg.region_id, self.cfg.cloud_url,
                 binding["ckks_key_id"][:16])

    async def refresh_keys(self) -> None:
        self.keys = await self.cloud.participant_keys()

    # -- taking submissions ---------------------------------------------------------------------------------
    async def take(self, round_id: int, raw: bytes) -> SubmissionAck:
        if len(raw) > MAX_UPDATE_BYTES:
            raise Refused(413, f"body of {len(raw)} bytes exceeds {MAX_UPDATE_BYTES}")
        try:
            sub = Submission.model_validate_json(raw)
        except ValueError as exc:
            raise Refused(422, f"not a submission: {exc}") from exc
        env = sub.envelope
        if env.region != self.cfg.region_id:
            raise Refused(400, f"the update is addressed to {env.region or 'the cloud directly'}, this is region "
                               f"{self.cfg.region_id}")
        if env.round != round_id:
            raise Refused(400, f"envelope is for round {env.round}, posted to round {round_id}")
        if self.cfg.members is not None and env.participant not in self.cfg.members:
            raise Refused(403, f"participant {env.participant} is not a member of region {self.cfg.region_id}")
        if env.participant not in self.keys:
            await self.refresh_keys()
        if env.participant not in self.keys:
            raise Refused(403, f"participant {env.participant} is not enrolled at the cloud")
        try:
            verify(self.keys[env.participant], env.model_dump(mode="json"), sub.signature)
        except SignatureError as exc:
            raise Refused(401, f"not signed by {env.participant}'s enrolled key: {exc}") from exc
        try:
            blob = base64.b64decode(sub.ciphertext, validate=True)
        except ValueError as exc:
            raise Refused(400, "ciphertext is not base64") from exc
        if hashlib.sha256(blob).hexdigest() != env.ciphertext_sha256:
            raise Refused(400, "ciphertext sha256 does not match the signed one")
        if self._known(round_id, env.participant, env.idempotency_key):  # a resend: acknowledged again, even late
            return SubmissionAck(status="accepted", duplicate=True, round=round_id)
        rnd = await self.cloud.current_round()
        if rnd is None or rnd.round != round_id or rnd.state != "collecting" or rnd.secagg_phase != "input":
            raise Refused(409, f"round {round_id} is not taking masked inputs "
                               f"(current: {rnd.round if rnd else None}, {rnd.state if rnd else None}, "
                               f"{rnd.secagg_phase if rnd else None})")
        try:
            n = await asyncio.to_thread(ckks.check, self.ctx, blob, encoding=ckks.RESIDUES)
        except ckks.CKKSError as exc:
            raise Refused(400, str(exc)) from exc
        if n != model.N_PARAMS:
            raise Refused(400, f"update has {n} values, {model.ARCHITECTURE} has {model.N_PARAMS}")
        async with self._lock:
            state = self.rounds.setdefault(round_id, _Round())
            if self._known(round_id, env.participant, env.idempotency_key):
                return SubmissionAck(status="accepted", duplicate=True, round=round_id)
            body = json.loads(raw)
            path = self.inputs_dir / f"round-{round_id}" / f"{env.participant}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(atomic_write_json, path, body, mode=0o600)  # on disk before it is acknowledged
            state.pending[env.participant] = _Input(body=body, blob=blob, arrived=time.monotonic())
            full = self.cfg.members is not None and self.cfg.members <= set(state.pending) | set(state.forwarded)
        if full:  # forwarded in the background: the last member's request does not wait for the cloud
            task = asyncio.create_task(self.flush(round_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return SubmissionAck(status="accepted", duplicate=False, round=round_id)

    def _known(self, round_id: int, participant: str, idempotency_key: str) -> bool:
        """True for an exact resend of what this relay holds or forwarded; refuses another update of the participant
        in the round, and any resend whose batch the cloud refused (with the cloud's reason)."""
        state = self.rounds.get(round_id)
        if state is None:
            return False
        prior = state.pending.get(participant)
        prior_key = prior.body["envelope"]["idempotency_key"] if prior else state.forwarded.get(participant)
        if prior_key is None:
            return False
        if participant in state.refused:
            raise Refused(409, f"the cloud refused this region's aggregate holding {participant}'s update in round "
                               f"{round_id}: {state.refused[participant]}")
        if prior_key != idempotency_key:
            raise Refused(409, f"participant {participant} already submitted to round {round_id}")
        return True

    def _reload(self) -> None:
        """Submissions acknowledged before a restart: those not forwarded yet, and what became of the others (so a
        participant's resend is never forwarded twice)."""
        for path in sorted(self.inputs_dir.glob("round-*/*.json")) if self.inputs_dir.exists() else []:
            body = json.loads(path.read_text())
            state = self.rounds.setdefault(int(path.parent.name.split("-", 1)[1]), _Round())
            if path.name.endswith(".forwarded.json"):
                pid = path.name.removesuffix(".forwarded.json")
                state.forwarded[pid] = body["idempotency_key"]
                if body.get("refused"):
                    state.refused[pid] = body["refused"]
            else:
                state.pending[path.stem] = _Input(body=body, blob=base64.b64decode(body["ciphertext"]),
                                                  arrived=time.monotonic())

    # -- forwarding -----------------------------------------------------------------------------------------
    async def flush(self, round_id: int) -> dict | None:
        """Sum the round's pending inputs and forward them as one signed aggregate (answering an audit)."""
        async with self._lock:
            state = self.rounds.get(round_id)
            if state is None or not state.pending:
                return None
            batch = dict(sorted(state.pending.items()))
            summed = await asyncio.to_thread(ckks.sum_encrypted, self.ctx, [i.blob for i in batch.values()])
            doc = region.statement(round_id=round_id, region=self.cfg.region_id, aggregate=summed,
                                   contributors={p: i.body["envelope"]["ciphertext_sha256"] for p, i in batch.items()})
            body = {"statement": doc, "signature": region.sign_statement(self.key, doc),
                    "members": [{"envelope": i.body["envelope"], "signature": i.body["signature"]}
                                for i in batch.values()],
                    "aggregate": base64.b64encode(summed).decode("ascii")}
            record = {"round": round_id, "aggregate_sha256": doc["aggregate_sha256"], "contributors": sorted(batch)}
            try:
                ack = await self.cloud.forward(round_id, body, {p: i.blob for p, i in batch.items()})
                record.update(status="accepted", audited=ack.status == "audit")
            except Refused as exc:
                record.update(status="refused", reason=exc.reason)
                log.error("region %s: aggregate of %s for round %s refused: %s", self.cfg.region_id, sorted(batch),
                          round_id, exc.reason)
            except httpx.TransportError as exc:  # kept pending: forwarded at the next tick
                log.warning("region %s: cloud unreachable (%s); batch kept", self.cfg.region_id, exc)
                return None
            for pid in batch:
                del state.pending[pid]
                state.forwarded[pid] = key = batch[pid].body["envelope"]["idempotency_key"]
                if record["status"] == "refused":
                    state.refused[pid] = record["reason"]
                folder = self.inputs_dir / f"round-{round_id}"
                atomic_write_json(folder / f"{pid}.forwarded.json", {"idempotency_key": key,
                                                                      "refused": state.refused.get(pid)})
                (folder / f"{pid}.json").unlink(missing_ok=True)
            state.batches.append(record)
            log.info("region %s: round %s: aggregate of %d forwarded: %s", self.cfg.region_id, round_id,
                     len(batch), record["status"])
            return record

    async def tick(self) -> None:
        """Forward every batch whose oldest input has waited `flush_after_s`; forget rounds long gone."""
        now = time.monotonic()
        for rid, state in list(self.rounds.items()):
            if state.pending and now - min(i.arrived for i in state.pending.values()) >= self.cfg.flush_after_s:
                await self.flush(rid)
        newest = max(self.rounds, default=0)
        for rid in [r for r in self.rounds if r < newest - 4 and not self.rounds[r].pending]:
            del self.rounds[rid]
            shutil.rmtree(self.inputs_dir / f"round-{rid}", ignore_errors=True)

    def status(self) -> dict:
        return {"region": self.cfg.region_id, "rounds": {
            str(rid): {"pending": sorted(s.pending), "forwarded": sorted(s.forwarded), "batches": s.batches}
            for rid, s in sorted(self.rounds.items())}}

    async def aclose(self) -> None:
        await self.cloud.aclose()


