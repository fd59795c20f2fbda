"""A federation participant (gateway or hospital): answer each round with a DP-trained, CKKS-encrypted,
signed update, or a signed refusal when the round would pass the node's privacy cap.

DP-SGD sampling and noise come from the OS CSPRNG (`PrivacyRNG.secure()`); a seed is accepted only in the named
simulation mode (`privacy_rng="simulation"`, replays and studies), which logs `SIMULATION_LABEL` and says so in the
node's status. Epsilon is per patient (user-level DP-SGD) unless the window unit is chosen, and labelled so.
Training runs in a thread of this process, or as a task of a `sim.executors` executor when one is given (`hospital
pool --ray`: a Ray task with this process's thread counts, the same result for the same seed in simulation mode).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np

from federation import ckks, dp_accounting
from federation.enrollment import ContextMismatch, check_context, verify_binding
from federation.errors import ConfigError
from federation.privacy_rng import MODES, SECURE, SIMULATION, PrivacyRNG
from federation.request_auth import ParticipantAuth
from federation.responses import Enrolled, ModelView, PublicRound
from federation.runtime import atomic_write_json
from federation.signing import REFUSAL_DOMAIN, load_or_create_key, public_key_b64, sign
from federation.tls import certificate_refused
from federation.windows import Windows
from federation.wire import PARTICIPANT_ID, DPReport, UpdateEnvelope
from gateway.cloud_client import CloudClient, CloudRejected
from gateway.secagg_client import SecAggClient
from gateway.state import NodeState
from gateway.trainer import DPConfig, TrainResult, plan_steps, train_dp, units_of
from gateway.witness import LogWitness, LogWitnessAlarm

if TYPE_CHECKING:
    from sim.executors import Executor

log = logging.getLogger(__name__)
WindowSource = Callable[[float | None], Windows | tuple[np.ndarray, np.ndarray]]
RoundHook = Callable[[PublicRound | None, CloudClient], Awaitable[None]]
_BASE_WEIGHTS: dict[tuple[str, int], np.ndarray] = {}  # (cloud url, version) -> weights, newest last


@dataclass(frozen=True)
class NodeConfig:
    participant_id: str
    kind: str  # "gateway" | "hospital"
    cloud_url: str
    state_dir: Path
    enroll_token: str
    dp: DPConfig
    privacy_rng: str = SECURE  # "simulation" (by name) is the only mode that takes a seed
    seed: int | None = None
    min_windows: int = 32
    poll_seconds: float = 0.5
    expected_key_id: str | None = None  # the federation's CKKS key id from provisioning (--ckks-key-id), if given
    ca_file: Path | None = None  # the cloud's CA bundle (https); None: the system's CAs
    log_key: str | None = None  # the cloud's audit log key (base64), pinned; None: trusted on first use
    witness_interval_s: float = 5.0  # how often the log witness checks between rounds (gateway/witness.py)
    region: str | None = None  # the region relay that sums this node's updates (federation.region); None: direct
    region_url: str | None = None  # that relay's base URL

    def __post_init__(self) -> None:
        if self.privacy_rng not in MODES:
            raise ConfigError(f"privacy_rng must be one of {MODES}, got {self.privacy_rng!r}")
        if self.privacy_rng == SECURE and self.seed is not None:
            raise ConfigError("a seed makes DP-SGD noise and sampling reproducible by anyone who knows it: refused "
                              "outside the named simulation mode (privacy_rng='simulation', --privacy-rng "
                              "simulation)")
        if self.privacy_rng == SIMULATION and self.seed is None:
            raise ConfigError("simulation mode needs a seed")
        if (self.region is None) != (self.region_url is None):
            raise ConfigError("a region and its relay's URL go together (--region and --region-url)")
        if self.region is not None and not re.match(PARTICIPANT_ID, self.region):
            raise ConfigError(f"region id {self.region!r} must match {PARTICIPANT_ID}")

    def round_rng(self, round_id: int) -> PrivacyRNG:
        """The round's privacy randomness: the OS CSPRNG, or (simulation mode only) a stream of (seed, round)."""
        if self.privacy_rng == SECURE:
            return PrivacyRNG.secure()
        return PrivacyRNG.simulation(np.random.SeedSequence([int(self.seed), int(round_id)]))


async def next_poll(stop: asyncio.Event, started: float, period: float) -> None:
    """Wait until `period` seconds after `started` (the event loop's clock), or until `stop`: a poll every period,
    however long the poll's own work took."""
    rest = max(0.0, period - (asyncio.get_running_loop().time() - started))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=rest)


@dataclass(frozen=True)
class Prepared:
    """A round's update trained ahead of its release: nothing of it has left the node or been booked."""

    result: TrainResult
    delta: np.ndarray  # trained weights minus the round's base weights
    dp: DPReport  # its privacy cost, the history it would book included


class ParticipantNode:
    def __init__(self, cfg: NodeConfig, windows: WindowSource, *, on_round: RoundHook | None = None,
                 trainer: Executor | None = None) -> None:
        self.cfg = cfg
        self.windows = windows
        self.trainer = trainer  # None: train in a thread of this process
        self.training_slots: asyncio.Semaphore | None = None  # shared by a pool's nodes: how many train at once
        self.on_round = on_round  # sees every polled round view (the gateway relays new models from it)
        self._privacy_cache: tuple[int, dict] | None = None
        self.enrolled = False
        self.key = load_or_create_key(cfg.state_dir / "participant-key.pem")
        self.state_path = cfg.state_dir / "node-state.json"
        self.state = NodeState.load(self.state_path)
        self.cloud = CloudClient(cfg.cloud_url, ca_file=cfg.ca_file, auth=ParticipantAuth(self.key, cfg.participant_id))
        # updates go through the region relay when one is configured; everything else goes to the cloud
        self.updates = self.cloud if cfg.region_url is None else CloudClient(cfg.region_url, ca_file=cfg.ca_file)
        self.secagg = SecAggClient(participant_id=cfg.participant_id, key=self.key, cloud=self.cloud,
                                   state_dir=cfg.state_dir)
        self.witness = LogWitness(cfg.state_dir, node_id=cfg.participant_id, pinned_key=cfg.log_key,
                                  interval_s=cfg.witness_interval_s, key=self.key)
        self._public_ctx = None
        self._ahead: dict[int, asyncio.Task] = {}  # round -> its training started ahead (`train_ahead`)
        self.binding: dict | None = None  # pinned at enrollment (federation.enrollment)
        if cfg.privacy_rng == SIMULATION:
            log.warning("%s: %s", cfg.participant_id, PrivacyRNG.simulation(0).label)

    async def enroll(self) -> None:
        """Enroll once (the token is one-time) and pin what the cloud binds to it: the CKKS key and the cloud's keys.
        On every start, the served context must be the pinned one, or the node encrypts nothing."""
        marker = self.cfg.state_dir / "enrolled.json"
        if not marker.exists():
            body = {"participant_id": self.cfg.participant_id, "kind": self.cfg.kind,
                    "public_key": public_key_b64(self.key), "token": self.cfg.enroll_token}
            answer = Enrolled.model_validate((await self.cloud.request("POST", "/v1/participants", json=body)).json())
            verify_binding(self.cfg.enroll_token, answer.binding, answer.binding_mac,
                           expected_key_id=self.cfg.expected_key_id)
            atomic_write_json(marker, {"cloud_url": self.cfg.cloud_url, "public_key": public_key_b64(self.key),
                                       "binding": answer.binding}, indent=1)
        self.binding = json.loads(marker.read_text()).get("binding")
        if not self.binding:
            raise ContextMismatch(f"{marker} was written before enrollment pinned the federation's keys: "
                                  "re-enroll this node with a new token")
        ctx_bytes = (await self.cloud.request("GET", "/v1/context")).content
        ctx = ckks.load_context(ctx_bytes)
        check_context(ctx_bytes, ctx, self.binding)
        self._public_ctx = ctx
        log.info("%s enrolled with %s (CKKS key %s pinned)", self.cfg.participant_id, self.cfg.cloud_url,
                 self.binding["ckks_key_id"][:16])

    def epsilon(self, history: list[tuple[float, float, int]]) -> float:
        return dp_accounting.epsilon(history, delta=self.cfg.dp.delta, accountant=self.cfg.dp.accountant)

    def status(self) -> dict:
        """What the node writes to its status file: enrollment, rounds answered, privacy spent."""
        out = {"enrolled": self.enrolled, "answered": self.state.answered, "outbox": sorted(self.state.outbox),
               "privacy": self.privacy_status(), "privacy_rng": self.cfg.privacy_rng, **self.witness.status()}
        if self.cfg.privacy_rng == SIMULATION:
            out["simulation_label"] = PrivacyRNG.simulation(0).label
        return out

    def privacy_status(self) -> dict:
        """Cumulative and last-round epsilon recomputed from the persisted history (cached per history length)."""
        hist = self.state.steps()
        if self._privacy_cache is None or self._privacy_cache[0] != len(hist):
            self._privacy_cache = (len(hist), {
                "epsilon_cumulative": self.epsilon(hist), "epsilon_last_round": self.epsilon(hist[-1:]),
                "rounds_trained": len(hist), "delta": self.cfg.dp.delta, "unit": self.cfg.dp.unit,
                "accountant": self.cfg.dp.accountant, "epsilon_cap": self.cfg.dp.epsilon_cap})
        return self._privacy_cache[1]

    async def enroll_until_ready(self, stop: asyncio.Event) -> bool:
        """Enroll, retrying while the cloud is not up yet; False if stopped first. Flushes a leftover outbox."""
        while not stop.is_set():
            try:
                await self.enroll()
                self.enrolled = True
                break
            except (httpx.TransportError, httpx.HTTPStatusError, CloudRejected) as exc:
                log.warning("%s: enrollment failed (%s); retrying", self.cfg.participant_id, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=5.0)
        if not self.enrolled:
            return False
        with contextlib.suppress(httpx.TransportError):
            await self.flush_outbox()
        return True

    async def poll_round(self) -> PublicRound | None:
        """The cloud's current round view, or None when there is none, the cloud is unreachable or its answer is
        not a round view."""
        try:
            return PublicRound.model_validate((await self.cloud.request("GET", "/v1/rounds/current")).json())
        except CloudRejected:
            return None  # no round yet
        except httpx.TransportError as exc:  # the cloud is unreachable: keep ingesting, poll again later
            log.warning("%s: cloud unreachable (%s)", self.cfg.participant_id, exc)
            return None
        except ValueError as exc:  # not JSON, or not a round view (pydantic's ValidationError is a ValueError)
            log.warning("%s: the cloud's current round is not a round view: %s", self.cfg.participant_id, exc)
            return None

    def should_answer(self, rnd: PublicRound | None) -> bool:
        return rnd is not None and rnd.state == "collecting" and str(rnd.round) not in self.state.answered \
            and self.cfg.participant_id in rnd.expected and self.secagg.input_ready(rnd)

    async def serve_round(self, rnd: PublicRound) -> None:
        """Answer `rnd` if this node is expected and has not answered; errors affect this round only."""
        self.train_ahead(rnd)
        await self.secagg.step(rnd)  # secure aggregation's phases other than input (gateway.secagg_client)
        if not self.should_answer(rnd):
            return
        try:
            await self.answer(rnd)
        except (CloudRejected, ckks.CKKSError, ValueError) as exc:  # this round only; keep serving
            log.error("%s: round %s not answered: %s", self.cfg.participant_id, rnd.round, exc)
            with contextlib.suppress(httpx.TransportError):
                await self.refuse(rnd.round, f"node error: {exc}")
        except httpx.TransportError as exc:  # anything trained is in the outbox; resent next poll
            if certificate_refused(exc):  # the cloud or region relay is not who --ca-file vouches for
                log.error("%s: round %s: server refused, its certificate does not verify against the CA file (%s)",
                          self.cfg.participant_id, rnd.round, exc)
            else:
                log.warning("%s: round %s: cloud unreachable (%s)", self.cfg.participant_id, rnd.round, exc)

    async def run(self, stop: asyncio.Event) -> None:
        if not await self.enroll_until_ready(stop):
            return
        while not stop.is_set():
            started = asyncio.get_running_loop().time()
            rnd = await self.poll_round()
            try:  # the audit log must extend what this node saw, checked before every answer (gateway/witness.py)
                if not await self.witness.check(self.cloud, force=self.should_answer(rnd)):
                    rnd = None  # the log could not be checked: answer nothing this time
            except LogWitnessAlarm:
                return  # forked or rolled back: the alarm file and a critical log line say so
            if rnd is not None:
                await self.serve_round(rnd)
            if self.on_round is not None:  # also before the first round: the relay publishes the initial model
                try:
                    await self.on_round(rnd, self.cloud)
                except Exception:  # a relay problem must never stop the participant loop
                    log.exception("%s: round hook failed", self.cfg.participant_id)
            if self.state.outbox:
                with contextlib.suppress(httpx.TransportError):
                    await self.flush_outbox()
            await next_poll(stop, started, self.cfg.poll_seconds)

    def train_ahead(self, rnd: PublicRound | None) -> None:
        """Start training for a round this node is expected in as soon as the round collects, so that training
        overlaps the secure-aggregation phases before input; the result stays in memory, unreleased and unbooked,
        until `answer`. Preparations for any other round are dropped."""
        if rnd is None:  # the cloud did not answer this poll: keep what is under way
            return
        for stale in [r for r in self._ahead if r != rnd.round]:
            self._ahead.pop(stale).cancel()
        if rnd.state != "collecting" or rnd.round in self._ahead:
            return
        if str(rnd.round) in self.state.answered or self.cfg.participant_id not in rnd.expected:
            return
        task = asyncio.create_task(self._prepare(rnd))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved by `answer`, or dropped
        self._ahead[rnd.round] = task

    async def _prepare(self, rnd: PublicRound) -> Prepared | str:
        """The round's trained update and its privacy cost, or why the node refuses the round."""
        unit = self.cfg.dp.unit
        data = await asyncio.to_thread(self.windows, rnd.data_cutoff)
        n_windows = len(data[1] if isinstance(data, tuple) else data.y)
        if n_windows < self.cfg.min_windows:
            return f"only {n_windows} training windows (need {self.cfg.min_windows})"
        n_units = units_of(data, unit)
        q, steps = plan_steps(n_units, cfg=self.cfg.dp, epochs=rnd.local_epochs)
        step = (self.cfg.dp.noise_multiplier, q, steps)
        history = [*self.state.steps(), step]
        projected = await asyncio.to_thread(self.epsilon, history)
        if projected > self.cfg.dp.epsilon_cap:
            return (f"privacy cap: cumulative epsilon would reach {projected:.3f} > cap {self.cfg.dp.epsilon_cap} "
                    f"(delta {self.cfg.dp.delta}, per {unit}, {self.cfg.dp.accountant})")
        base_w = await self.base_weights(rnd.base_model_version)
        result = await self.train(rnd.round, base_w, data, epochs=rnd.local_epochs)
        dp = DPReport(noise_multiplier=step[0], sample_rate=q, steps=steps, accountant=self.cfg.dp.accountant,
                      delta=self.cfg.dp.delta, unit=unit, epsilon_round=await asyncio.to_thread(self.epsilon, [step]),
                      epsilon_cumulative=projected, history=[list(h) for h in history])
        return Prepared(result=result, delta=result.weights.astype(np.float64) - base_w, dp=dp)

    async def answer(self, rnd: PublicRound) -> None:
        round_id, unit = rnd.round, self.cfg.dp.unit
        ahead = self._ahead.pop(round_id, None)
        prepared = await ahead if ahead is not None else await self._prepare(rnd)
        if isinstance(prepared, str):
            await self.refuse(round_id, prepared)
            return
        result, dp = prepared.result, prepared.dp
        weighted_delta = ckks.weighted_update(prepared.delta, result.n_samples)
        blob = await self.secagg.masked_blob(round_id, weighted_delta, self._public_ctx)
        env = UpdateEnvelope(round=round_id, participant=self.cfg.participant_id, n_samples=result.n_samples,
                             base_model_version=rnd.base_model_version,
                             ciphertext_sha256=hashlib.sha256(blob).hexdigest(),
                             idempotency_key=uuid.uuid4().hex, dp=dp, region=self.cfg.region)
        doc = env.model_dump(mode="json")
        body = {"envelope": doc, "signature": sign(self.key, doc),
                "ciphertext": base64.b64encode(blob).decode("ascii")}
        # Spend first, then send: the privacy cost is booked before anything leaves the node.
        self.state.history = [list(h) for h in dp.history]
        self.state.outbox[str(round_id)] = body
        self.state.save(self.state_path)
        log.info("%s trained round %s: %d %ss (%d windows), %d steps, loss %.4f, epsilon %.3f (delta %g, per %s, %s)%s",
                 self.cfg.participant_id, round_id, result.n_samples, unit, result.n_windows, dp.steps, result.loss,
                 dp.epsilon_cumulative, self.cfg.dp.delta, unit, self.cfg.dp.accountant,
                 "" if self.cfg.privacy_rng == SECURE else f" [{PrivacyRNG.simulation(0).label}]")
        await self.flush_outbox()

    async def train(self, round_id: int, base_w: np.ndarray, data: Windows | tuple[np.ndarray, np.ndarray], *,
                    epochs: int) -> TrainResult:
        """DP-SGD from `base_w` with the round's privacy randomness: in a thread, or as one task of `self.trainer`."""
        rng = self.cfg.round_rng(round_id)
        async with self.training_slots or contextlib.nullcontext():
            if self.trainer is None:
                return await asyncio.to_thread(train_dp, base_w, data, cfg=self.cfg.dp, epochs=epochs, rng=rng)
            trainer = self.trainer
            return await asyncio.to_thread(lambda: next(iter(trainer.map(train_dp, [(base_w, data)],
                                                                         cfg=self.cfg.dp, epochs=epochs, rng=rng))))

    async def base_weights(self, version: int) -> np.ndarray:
        """A model version's weights; versions are immutable, so nodes sharing a process fetch each once."""
        key = (self.cfg.cloud_url, version)
        if key not in _BASE_WEIGHTS:
            doc = ModelView.model_validate((await self.cloud.request("GET", f"/v1/models/{version}")).json())
            _BASE_WEIGHTS[key] = np.frombuffer(base64.b64decode(doc.weights), dtype=np.float32)
            while len(_BASE_WEIGHTS) > 4:
                _BASE_WEIGHTS.pop(next(iter(_BASE_WEIGHTS)))
        return _BASE_WEIGHTS[key]

    async def flush_outbox(self) -> None:
        """(Re)send every stored submission (to the region relay the envelope names, or the cloud); either recognises
        a resend by its idempotency key."""
        for round_id, body in list(self.state.outbox.items()):
            client = self.cloud if body["envelope"].get("region") is None else self.updates
            try:
                await client.request("POST", f"/v1/rounds/{round_id}/updates", json=body)
                self.state.answered[round_id] = "submitted"
            except CloudRejected as exc:
                log.error("%s: round %s submission rejected: %s", self.cfg.participant_id, round_id, exc)
                self.state.answered[round_id] = f"rejected: {exc.reason}"
            del self.state.outbox[round_id]
            self.state.save(self.state_path)

    async def refuse(self, round_id: int, reason: str) -> None:
        log.warning("%s refuses round %s: %s", self.cfg.participant_id, round_id, reason)
        doc = {"round": round_id, "participant": self.cfg.participant_id, "reason": reason}
        body = {**doc, "signature": sign(self.key, doc, domain=REFUSAL_DOMAIN)}
        try:
            await self.cloud.request("POST", f"/v1/rounds/{round_id}/refusals", json=body)
        except CloudRejected as exc:
            log.error("refusal of round %s not recorded: %s", round_id, exc)
        self.state.answered[str(round_id)] = f"refused: {reason}"
        self.state.save(self.state_path)

    async def aclose(self) -> None:
        await self.cloud.aclose()
        if self.updates is not self.cloud:
            await self.updates.aclose()
