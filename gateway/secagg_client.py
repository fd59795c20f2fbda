"""A participant's side of secure aggregation (`federation.secagg`; the cloud's side is `cloud.secagg`): on each
polled round it answers the phase the round is in (advertise keys, share seeds, sign the view, reveal unmasking
shares) from its signed view of the round, and masks the node's update before CKKS encryption.

The round's secrets (X25519 keys, self-mask seed, the shares it holds, the views it answered) are kept in
`<state dir>/secagg/round-<id>.json` (mode 0600, written before anything is sent), so a restarted node finishes the
round it was in and never answers two different views of one round; the file is deleted once the round has left
collecting. Everything a participant checks before it answers is in `federation.secagg.ParticipantSession`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation import secagg
from federation.responses import PublicRound, SecAggView
from federation.runtime import atomic_write_json
from gateway.cloud_client import CloudClient, CloudRejected

log = logging.getLogger(__name__)
ACTIONS = {  # phase -> its route, and its list in a batch (federation.wire.SecAggBatch)
    "advertise": "keys", "share": "shares", "consistency": "consistency", "unmask": "unmask"}


class SecAggClient:
    def __init__(self, *, participant_id: str, key: Ed25519PrivateKey, cloud: CloudClient, state_dir: Path) -> None:
        self.participant = participant_id
        self.key = key
        self.cloud = cloud
        self.dir = state_dir / "secagg"
        self._sessions: dict[int, secagg.ParticipantSession] = {}
        self._answered: set[tuple[int, str]] = set()  # (round, phase) already answered: no view fetch needed
        self._input_views: dict[int, SecAggView] = {}  # a view of the input phase a pool fetched for it (masking)

    # -- the round's secrets on disk -------------------------------------------------------------------------
    def _path(self, round_id: int) -> Path:
        return self.dir / f"round-{round_id}.json"

    def _session(self, round_id: int, *, create: bool) -> secagg.ParticipantSession | None:
        if round_id in self._sessions:
            return self._sessions[round_id]
        path = self._path(round_id)
        if path.exists():
            session = secagg.ParticipantSession.from_state(json.loads(path.read_text()))
        elif create:
            session = secagg.ParticipantSession(round_id=round_id, participant=self.participant)
        else:
            return None
        self._sessions[round_id] = session
        return session

    def _save(self, session: secagg.ParticipantSession) -> None:
        atomic_write_json(self._path(session.round_id), session.to_state(), mode=0o600)

    def forget(self, *, before: int | None = None, round_id: int | None = None) -> None:
        """Drop the secrets of a finished round (or of every round before `before`)."""
        for path in self.dir.glob("round-*.json") if self.dir.exists() else []:
            rid = int(path.stem.split("-", 1)[1])
            if rid == round_id or (before is not None and rid < before):
                path.unlink(missing_ok=True)
                self._sessions.pop(rid, None)

    # -- talking to the cloud ------------------------------------------------------------------------------
    async def view(self, round_id: int) -> SecAggView:
        """This participant's view of the round's secure aggregation (a ValueError if the answer is not one)."""
        resp = await self.cloud.request("POST", f"/v1/rounds/{round_id}/secagg/view", json=self.view_request(round_id))
        return SecAggView.model_validate(resp.json())

    def input_ready(self, rnd: PublicRound) -> bool:
        """True once the round takes masked inputs and this node shared its seeds (it may train and submit)."""
        if rnd.secagg_phase != "input":
            return False
        session = self._session(rnd.round, create=False)
        return session is not None and session.pinned is not None

    async def masked_blob(self, round_id: int, weighted_update: np.ndarray, ctx: object) -> bytes:
        """The node's weighted update, quantised, masked for this round and CKKS-encrypted."""
        session = self._session(round_id, create=False)
        if session is None:
            raise secagg.SecAggError(f"no secure-aggregation session for round {round_id}")
        typed = self._input_views.pop(round_id, None) or await self.view(round_id)
        blob = await asyncio.to_thread(session.masked_blob, typed.model_dump(mode="json"), weighted_update, ctx)
        self._save(session)
        return blob

    def needs_input_view(self, rnd: PublicRound) -> bool:
        """True if the round takes inputs and this node will mask one without a view in hand (a pool fetches its
        nodes' views together: the keys and U2 they mask against no longer change in this phase)."""
        return self.input_ready(rnd) and rnd.round not in self._input_views

    def keep_input_view(self, round_id: int, view: SecAggView) -> None:
        if view.phase == "input":
            self._input_views = {round_id: view}  # one round at a time

    def pending(self, rnd: PublicRound) -> bool:
        """True if the round's current phase (not input) is this node's to answer; forgets finished rounds."""
        round_id, phase = rnd.round, rnd.secagg_phase
        if rnd.state != "collecting":
            self.forget(round_id=round_id)
            return False
        self.forget(before=round_id)
        return phase in ACTIONS and self.participant in rnd.expected and (round_id, phase) not in self._answered

    async def step(self, rnd: PublicRound) -> None:
        """Answer the round's current secure-aggregation phase (not input: that is `ParticipantNode.answer`).
        Problems affect this round only: they are logged, and the node takes no further part in it."""
        if not self.pending(rnd):
            return
        round_id, phase = rnd.round, rnd.secagg_phase
        with self.attempt(round_id, phase):
            body = await asyncio.to_thread(self.answer, round_id, phase, await self.view(round_id))
            if body is not None:
                await self.post(round_id, phase, body)

    async def post(self, round_id: int, phase: str, body: dict) -> None:
        """Send one answer on its own (a pool sends its nodes' answers together: `gateway.secagg_batch`)."""
        await self.cloud.request("POST", f"/v1/rounds/{round_id}/secagg/{ACTIONS[phase]}", json=body)
        self.sent(round_id, phase)

    @contextlib.contextmanager
    def attempt(self, round_id: int, phase: str) -> Iterator[None]:
        """Log what goes wrong while answering a phase; anything but an unreachable cloud (answered at the next poll)
        ends this node's part in it."""
        try:
            yield
        except (secagg.SecAggError, ValueError) as exc:  # ValueError: a view that is not one (pydantic)
            log.error("%s: round %s, phase %s: not answered: %s", self.participant, round_id, phase, exc)
            self._answered.add((round_id, phase))
        except CloudRejected as exc:
            self.refused(round_id, phase, str(exc))
        except httpx.TransportError as exc:
            log.warning("%s: round %s, phase %s: cloud unreachable (%s)", self.participant, round_id, phase, exc)

    def refused(self, round_id: int, phase: str, reason: str) -> None:
        log.error("%s: round %s, phase %s: refused by the cloud: %s", self.participant, round_id, phase, reason)
        self._answered.add((round_id, phase))

    def sent(self, round_id: int, phase: str) -> None:
        self._answered.add((round_id, phase))
        log.info("%s: round %s: secure aggregation %s sent", self.participant, round_id, phase)

    def view_request(self, round_id: int) -> dict:
        return secagg.view_request(self.key, round_id=round_id, participant=self.participant, at=time.time())

    def answer(self, round_id: int, phase: str, typed: SecAggView) -> dict | None:
        """This node's message for `phase` from its view, with the round's secrets on disk before it is returned;
        None when there is nothing to answer (already answered, or dropped from the round earlier)."""
        if typed.phase != phase or phase in typed.sent:
            self._answered.add((round_id, phase))
            return None
        if phase != "advertise" and self._session(round_id, create=False) is None:
            self._answered.add((round_id, phase))  # it missed the advertise phase: no part in this round
            return None
        session = self._session(round_id, create=True)
        members = [a.participant for a in typed.adverts]
        signers = [c.get("participant") for c in typed.consistency]
        if (phase == "share" and self.participant not in members) \
                or (phase == "consistency" and self.participant not in (typed.u3 or [])) \
                or (phase == "unmask" and self.participant not in signers):
            self._answered.add((round_id, phase))  # dropped from the round earlier: nothing to answer
            return None
        view = typed.model_dump(mode="json")  # the protocol's functions read the wire document
        build = {"advertise": lambda: session.advert(self.key), "share": lambda: session.shares(view, self.key),
                 "consistency": lambda: session.consistency(view, self.key),
                 "unmask": lambda: session.unmask(view, self.key)}[phase]
        body = build()
        self._save(session)  # the secrets and what was answered are on disk before anything leaves the node
        return body
