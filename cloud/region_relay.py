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
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from fastapi import FastAPI, HTTPException, Request

from federation import ckks, model, region, request_auth
from federation.enrollment import check_context, verify_binding
from federation.errors import ConfigError, SignatureError, WearfedError
from federation.limits import MAX_UPDATE_BYTES, PARTICIPANT_ID
from federation.responses import Enrolled, PublicRound, RegionAck, SubmissionAck, refusal_detail
from federation.runtime import Backoff, atomic_write_json
from federation.signing import load_or_create_key, public_key_b64, verify
from federation.tls import certificate_refused, tls_context
from federation.wire import Submission

log = logging.getLogger(__name__)
RETRY = Backoff(base_s=0.2, cap_s=5.0)


class Refused(WearfedError):
    """A submission (or the cloud, answering the relay) refused, with an HTTP status and a reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{reason} (HTTP {status})")
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class RelayConfig:
    region_id: str
    cloud_url: str
    state_dir: Path
    enroll_token: str | None = None  # needed once, for the first start
    members: frozenset[str] | None = None  # None: any enrolled participant that addresses this region
    flush_after_s: float = 2.0
    expected_key_id: str | None = None  # the federation's CKKS key id from provisioning, if given
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        import re

        if not re.match(PARTICIPANT_ID, self.region_id):
            raise ConfigError(f"region id {self.region_id!r} must match {PARTICIPANT_ID}")
        bad = sorted(m for m in self.members or () if not re.match(PARTICIPANT_ID, m))
        if bad:
            raise ConfigError(f"member ids {bad} must match {PARTICIPANT_ID}")
        if not self.flush_after_s > 0:
            raise ConfigError(f"flush_after_s must be positive, got {self.flush_after_s}")
        if not self.cloud_url.startswith(("http://", "https://")):
            raise ConfigError(f"cloud URL {self.cloud_url!r} must start with http:// or https://")


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
        self.key = load_or_create_key(cfg.state_dir / "region-key.pem")
        self.http = httpx.AsyncClient(base_url=cfg.cloud_url.rstrip("/"), timeout=60.0,
                                      verify=tls_context(cfg.ca_file))
        self.ctx = None
        self.keys: dict[str, str] = {}
        self.rounds: dict[int, _Round] = {}
        self._round_view: tuple[float, PublicRound] | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self.inputs_dir = cfg.state_dir / "inputs"

    # -- the cloud ------------------------------------------------------------------------------------------
    async def _request(self, method: str, path: str, *, attempts: int = 6, **kwargs: object) -> httpx.Response:
        for attempt in range(attempts):
            try:
                resp = await self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == attempts - 1 or certificate_refused(exc):
                    raise
            else:
                if resp.status_code < 400:
                    return resp
                if resp.status_code < 500 or attempt == attempts - 1:
                    raise Refused(resp.status_code, refusal_detail(resp))
            await asyncio.sleep(RETRY.delay(attempt))
        raise AssertionError("unreachable")

    def _signed(self, path: str) -> dict:
        return {"Authorization": request_auth.header(self.key, self.cfg.region_id, method="GET", path=path)}

    async def start(self) -> None:
        """Enroll once (pinning the federation's CKKS key and the cloud's keys), load the context, fetch the
        participants' keys and whatever was acknowledged before a restart."""
        marker = self.cfg.state_dir / "enrolled.json"
        if not marker.exists():
            if not self.cfg.enroll_token:
                raise ConfigError(f"region {self.cfg.region_id} is not enrolled yet ({marker} missing): give its "
                                  "one-time enrollment token (--enroll-token or WEARFED_REGION_TOKEN)")
            body = {"region_id": self.cfg.region_id, "public_key": public_key_b64(self.key),
                    "token": self.cfg.enroll_token}
            answer = Enrolled.model_validate((await self._request("POST", "/v1/regions", json=body)).json())
            verify_binding(self.cfg.enroll_token, answer.binding, answer.binding_mac,
                           expected_key_id=self.cfg.expected_key_id)
            atomic_write_json(marker, {"cloud_url": self.cfg.cloud_url, "public_key": public_key_b64(self.key),
                                       "binding": answer.binding}, indent=1)
        binding = json.loads(marker.read_text())["binding"]
        ctx_bytes = (await self._request("GET", "/v1/context")).content
        ctx = ckks.load_context(ctx_bytes)
        check_context(ctx_bytes, ctx, binding)
        self.ctx = ctx
        await self.refresh_keys()
        self._reload()
        log.info("region %s relays to %s (CKKS key %s pinned)", self.cfg.region_id, self.cfg.cloud_url,
                 binding["ckks_key_id"][:16])

    async def refresh_keys(self) -> None:
        path = f"/v1/regions/{self.cfg.region_id}/participant-keys"
        self.keys = (await self._request("GET", path, headers=self._signed(path))).json()

    async def current_round(self, *, max_age_s: float = 1.0) -> PublicRound | None:
        now = time.monotonic()
        if self._round_view is None or now - self._round_view[0] > max_age_s:
            try:
                view = PublicRound.model_validate((await self._request("GET", "/v1/rounds/current")).json())
            except Refused:
                return None
            self._round_view = (now, view)
        return self._round_view[1]

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
        rnd = await self.current_round()
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
                ack = await self._forward(round_id, body, batch)
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

    async def _forward(self, round_id: int, body: dict, batch: dict[str, _Input]) -> RegionAck:
        resp = await self._request("POST", f"/v1/rounds/{round_id}/region-aggregates", json=body)
        ack = RegionAck.model_validate(resp.json())
        if ack.status == "audit":  # the cloud checks this batch's inputs: post every one of them, signed
            inputs = {p: i.blob for p, i in batch.items()}
            sha = body["statement"]["aggregate_sha256"]
            doc = region.inputs_doc(round_id=round_id, region=self.cfg.region_id, aggregate_sha256=sha, inputs=inputs)
            answer = {"aggregate_sha256": sha, "signature": region.sign_inputs(self.key, doc),
                      "inputs": {p: base64.b64encode(b).decode("ascii") for p, b in inputs.items()}}
            RegionAck.model_validate((await self._request(
                "POST", f"/v1/rounds/{round_id}/region-aggregates/{sha}/inputs", json=answer)).json())
        return ack

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
        await self.http.aclose()


async def preflight(cfg: RelayConfig) -> None:
    """Enroll (first start) and check the cloud's context and the region's read before serving, so bad flags, a
    bad token or an unreachable cloud are one clear error instead of a failed server start."""
    relay = RegionRelay(cfg)
    try:
        await relay.start()
    finally:
        await relay.aclose()


def create_app(cfg: RelayConfig) -> FastAPI:
    """The relay's HTTP API: participants post submissions here exactly as they would to the cloud."""
    relay = RegionRelay(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):  # noqa: ANN202
        await relay.start()

        async def ticker() -> None:
            while True:
                try:
                    await relay.tick()
                except Exception:
                    log.exception("region %s: tick failed", cfg.region_id)
                await asyncio.sleep(0.2)

        task = asyncio.create_task(ticker())
        yield
        task.cancel()
        for rid in list(relay.rounds):  # hand over what was acknowledged before stopping
            with contextlib.suppress(Exception):
                await relay.flush(rid)
        await relay.aclose()

    app = FastAPI(title=f"wearfed region relay {cfg.region_id}", lifespan=lifespan)
    app.state.relay = relay

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok" if relay.ctx is not None else "starting", "region": cfg.region_id}

    @app.get("/v1/status")
    def status() -> dict:
        return relay.status()

    @app.post("/v1/rounds/{round_id}/updates")
    async def submit(round_id: int, request: Request) -> SubmissionAck:
        try:
            return await relay.take(round_id, await request.body())
        except Refused as exc:
            log.warning("region %s: submission to round %s refused: %s", cfg.region_id, round_id, exc.reason)
            raise HTTPException(status_code=exc.status, detail=exc.reason) from exc

    return app
