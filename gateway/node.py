"""A federation participant (gateway or hospital): answer each round with a DP-trained, CKKS-encrypted,
signed update, or a signed refusal when the round would pass the node's privacy cap.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from federation import ckks, dp_accounting
from federation.signing import REFUSAL_DOMAIN, load_or_create_key, public_key_b64, sign
from federation.wire import DPReport, UpdateEnvelope
from gateway.cloud_client import CloudClient, CloudRejected
from gateway.state import NodeState
from gateway.trainer import DPConfig, plan_steps, train_dp

log = logging.getLogger(__name__)
WindowSource = Callable[[float | None], tuple[np.ndarray, np.ndarray]]
RoundHook = Callable[[dict, CloudClient], Awaitable[None]]
_BASE_WEIGHTS: dict[tuple[str, int], np.ndarray] = {}  # (cloud url, version) -> weights, newest last


@dataclass(frozen=True)
class NodeConfig:
    participant_id: str
    kind: str  # "gateway" | "hospital"
    cloud_url: str
    state_dir: Path
    enroll_token: str
    dp: DPConfig
    seed: int = 0
    min_windows: int = 32
    poll_seconds: float = 0.5


class ParticipantNode:
    def __init__(self, cfg: NodeConfig, windows: WindowSource, *, on_round: RoundHook | None = None) -> None:
        self.cfg = cfg
        self.windows = windows
        self.on_round = on_round  # sees every polled round view (the gateway relays new models from it)
        self._privacy_cache: tuple[int, dict] | None = None
        self.enrolled = False
        self.key = load_or_create_key(cfg.state_dir / "participant-key.pem")
        self.state_path = cfg.state_dir / "node-state.json"
        self.state = NodeState.load(self.state_path)
        self.cloud = CloudClient(cfg.cloud_url)
        self._public_ctx = None

    async def enroll(self) -> None:
        # The provisioning token is one-time: enroll once, remember it, and skip the POST on later starts.
        marker = self.cfg.state_dir / "enrolled.json"
        if not marker.exists():
            body = {"participant_id": self.cfg.participant_id, "kind": self.cfg.kind,
                    "public_key": public_key_b64(self.key), "token": self.cfg.enroll_token}
            await self.cloud.request("POST", "/v1/participants", json=body)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f'{{"cloud_url": "{self.cfg.cloud_url}", "public_key": "{public_key_b64(self.key)}"}}\n')
        ctx_bytes = (await self.cloud.request("GET", "/v1/context")).content
        self._public_ctx = ckks.load_context(ctx_bytes)
        log.info("%s enrolled with %s", self.cfg.participant_id, self.cfg.cloud_url)

    def epsilon(self, history: list[tuple[float, float, int]]) -> float:
        return dp_accounting.epsilon(history, delta=self.cfg.dp.delta, accountant=self.cfg.dp.accountant)

    def status(self) -> dict:
        """What the node writes to its status file: enrollment, rounds answered, privacy spent."""
        return {"enrolled": self.enrolled, "answered": self.state.answered, "outbox": sorted(self.state.outbox),
                "privacy": self.privacy_status()}

    def privacy_status(self) -> dict:
        """Cumulative and last-round epsilon recomputed from the persisted history (cached per history length)."""
        hist = self.state.steps()
        if self._privacy_cache is None or self._privacy_cache[0] != len(hist):
            self._privacy_cache = (len(hist), {
                "epsilon_cumulative": self.epsilon(hist), "epsilon_last_round": self.epsilon(hist[-1:]),
                "rounds_trained": len(hist), "delta": self.cfg.dp.delta, "unit": dp_accounting.UNIT,
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

    async def poll_round(self) -> dict | None:
        """The cloud's current round view, or None when there is none or the cloud is unreachable."""
        try:
            return (await self.cloud.request("GET", "/v1/rounds/current")).json()
        except CloudRejected:
            return None  # no round yet
        except httpx.TransportError as exc:  # the cloud is unreachable: keep ingesting, poll again later
            log.warning("%s: cloud unreachable (%s)", self.cfg.participant_id, exc)
            return None

    def should_answer(self, rnd: dict | None) -> bool:
        return bool(rnd) and rnd["state"] == "collecting" and str(rnd["round"]) not in self.state.answered \
            and self.cfg.participant_id in rnd["expected"]

    async def serve_round(self, rnd: dict) -> None:
        """Answer `rnd` if this node is expected and has not answered; errors affect this round only."""
        if not self.should_answer(rnd):
            return
        try:
            await self.answer(rnd)
        except (CloudRejected, ckks.CKKSError, ValueError) as exc:  # this round only; keep serving
            log.error("%s: round %s not answered: %s", self.cfg.participant_id, rnd["round"], exc)
            with contextlib.suppress(httpx.TransportError):
                await self.refuse(rnd["round"], f"node error: {exc}")
        except httpx.TransportError as exc:  # anything trained is in the outbox; resent next poll
            log.warning("%s: round %s: cloud unreachable (%s)", self.cfg.participant_id, rnd["round"], exc)

    async def run(self, stop: asyncio.Event) -> None:
        if not await self.enroll_until_ready(stop):
            return
        while not stop.is_set():
            rnd = await self.poll_round()
            if rnd:
                await self.serve_round(rnd)
            if self.on_round is not None:  # also before the first round: the relay publishes the initial model
                try:
                    await self.on_round(rnd or {}, self.cloud)
                except Exception:  # a relay problem must never stop the participant loop
                    log.exception("%s: round hook failed", self.cfg.participant_id)
            if self.state.outbox:
                with contextlib.suppress(httpx.TransportError):
                    await self.flush_outbox()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.cfg.poll_seconds)

    async def answer(self, rnd: dict) -> None:
        round_id = rnd["round"]
        x, y = await asyncio.to_thread(self.windows, rnd.get("data_cutoff"))
        if len(x) < self.cfg.min_windows:
            await self.refuse(round_id, f"only {len(x)} training windows (need {self.cfg.min_windows})")
            return
        q, steps = plan_steps(len(x), cfg=self.cfg.dp, epochs=rnd["local_epochs"])
        step = (self.cfg.dp.noise_multiplier, q, steps)
        before = self.state.steps()
        projected = await asyncio.to_thread(self.epsilon, [*before, step])
        if projected > self.cfg.dp.epsilon_cap:
            await self.refuse(round_id, f"privacy cap: cumulative epsilon would reach {projected:.3f} > cap "
                                        f"{self.cfg.dp.epsilon_cap} (delta {self.cfg.dp.delta}, unit window)")
            return
        base_w = await self.base_weights(rnd["base_model_version"])
        seed = self.cfg.seed * 1_000_003 + round_id
        result = await asyncio.to_thread(train_dp, base_w, x, y, cfg=self.cfg.dp, epochs=rnd["local_epochs"],
                                         seed=seed)
        round_eps = await asyncio.to_thread(self.epsilon, [step])
        weighted_delta = ckks.weighted_update(result.weights.astype(np.float64) - base_w, result.n_samples)
        blob = await asyncio.to_thread(ckks.encrypt, self._public_ctx, weighted_delta)
        history = [*before, step]
        dp = DPReport(noise_multiplier=step[0], sample_rate=q, steps=steps, accountant=self.cfg.dp.accountant,
                      delta=self.cfg.dp.delta, epsilon_round=round_eps, epsilon_cumulative=projected,
                      history=[list(h) for h in history])
        env = UpdateEnvelope(round=round_id, participant=self.cfg.participant_id, n_samples=result.n_samples,
                             base_model_version=rnd["base_model_version"],
                             ciphertext_sha256=hashlib.sha256(blob).hexdigest(),
                             idempotency_key=uuid.uuid4().hex, dp=dp)
        doc = env.model_dump(mode="json")
        body = {"envelope": doc, "signature": sign(self.key, doc),
                "ciphertext": base64.b64encode(blob).decode("ascii")}
        # Spend first, then send: the privacy cost is booked before anything leaves the node.
        self.state.history = [list(h) for h in history]
        self.state.outbox[str(round_id)] = body
        self.state.save(self.state_path)
        log.info("%s trained round %s: %d windows, %d steps, loss %.4f, epsilon %.3f (delta %g, per window, %s)",
                 self.cfg.participant_id, round_id, result.n_samples, steps, result.loss, projected,
                 self.cfg.dp.delta, self.cfg.dp.accountant)
        await self.flush_outbox()

    async def base_weights(self, version: int) -> np.ndarray:
        """A model version's weights; versions are immutable, so nodes sharing a process fetch each once."""
        key = (self.cfg.cloud_url, version)
        if key not in _BASE_WEIGHTS:
            doc = (await self.cloud.request("GET", f"/v1/models/{version}")).json()
            _BASE_WEIGHTS[key] = np.frombuffer(base64.b64decode(doc["weights"]), dtype=np.float32)
            while len(_BASE_WEIGHTS) > 4:
                _BASE_WEIGHTS.pop(next(iter(_BASE_WEIGHTS)))
        return _BASE_WEIGHTS[key]

    async def flush_outbox(self) -> None:
        """(Re)send every stored submission; the cloud recognises a resend by its idempotency key."""
        for round_id, body in list(self.state.outbox.items()):
            try:
                await self.cloud.request("POST", f"/v1/rounds/{round_id}/updates", json=body)
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
