"""A hospital pool's nodes answer a secure-aggregation phase together: one request for all their views and one for
all their messages (`/secagg/views`, `/secagg/batch`), instead of two per node; in the input phase, one request for
the views they mask against. Each node still signs its own view request and message with its own key, builds its
answer from its own view and keeps its secrets in its own state directory (`gateway.secagg_client`); the cloud
checks each as if it came alone. If the cloud refuses a batch whole
(one node's signature or lock, or a cloud without batches), the nodes answer one by one, each with its own refusal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import httpx

from federation.responses import PublicRound, SecAggBatchResult, SecAggViews
from gateway.cloud_client import CloudClient, CloudRejected
from gateway.secagg_client import ACTIONS, SecAggClient

log = logging.getLogger(__name__)
OneByOne = Callable[[list[SecAggClient]], Awaitable[None]]


async def step_together(clients: Sequence[SecAggClient], rnd: PublicRound, cloud: CloudClient, *,
                        one_by_one: OneByOne) -> None:
    """Answer the round's current phase for every client that has it to answer; `one_by_one` steps clients on
    their own (the fallback)."""
    if rnd.secagg_phase == "input":
        await _fetch_input_views([c for c in clients if c.needs_input_view(rnd)], rnd.round, cloud)
        return
    due = [c for c in clients if c.pending(rnd)]
    if len(due) < 2:
        await one_by_one(due)
        return
    round_id, phase = rnd.round, rnd.secagg_phase
    try:
        views = await _views(due, round_id, cloud)
    except (CloudRejected, ValueError) as exc:
        log.warning("round %s, phase %s: views of %d nodes refused together (%s); asking one by one",
                    round_id, phase, len(due), exc)
        await one_by_one(due)
        return
    except httpx.TransportError as exc:
        log.warning("round %s, phase %s: cloud unreachable (%s); answered at the next poll", round_id, phase, exc)
        return
    answers: list[tuple[SecAggClient, dict]] = []
    for client, own in zip(due, views.views, strict=True):
        if own.status != 200:
            client.refused(round_id, phase, f"{own.status}: {own.detail}")
            continue
        with client.attempt(round_id, phase):
            body = await asyncio.to_thread(client.answer, round_id, phase, views.view_of(own))
            if body is not None:
                answers.append((client, body))
    if answers:
        await _send(answers, round_id, phase, cloud)


async def _fetch_input_views(clients: list[SecAggClient], round_id: int, cloud: CloudClient) -> None:
    """Give every node about to mask its input its view, in one request (a node without one asks on its own)."""
    if len(clients) < 2:
        return
    try:
        views = await _views(clients, round_id, cloud)
    except (CloudRejected, ValueError, httpx.TransportError) as exc:
        log.warning("round %s: views for masking not fetched together (%s); each node asks on its own", round_id, exc)
        return
    for client, own in zip(clients, views.views, strict=True):
        if own.status == 200:
            client.keep_input_view(round_id, views.view_of(own))


async def _views(clients: list[SecAggClient], round_id: int, cloud: CloudClient) -> SecAggViews:
    """Every client's view in one request (a ValueError if the answer does not answer the requests in order)."""
    resp = await cloud.request("POST", f"/v1/rounds/{round_id}/secagg/views",
                               json={"requests": [c.view_request(round_id) for c in clients]})
    views = SecAggViews.model_validate(resp.json())
    if [v.participant for v in views.views] != [c.participant for c in clients]:
        raise ValueError("the cloud's views do not answer the requests in order")
    return views


async def _send(answers: list[tuple[SecAggClient, dict]], round_id: int, phase: str, cloud: CloudClient) -> None:
    try:
        resp = await cloud.request("POST", f"/v1/rounds/{round_id}/secagg/batch",
                                   json={ACTIONS[phase]: [body for _, body in answers]})
        result = SecAggBatchResult.model_validate(resp.json())
        if [(r.participant, r.phase) for r in result.results] != [(c.participant, phase) for c, _ in answers]:
            raise ValueError("the cloud's results do not answer the batch in order")
    except (CloudRejected, ValueError) as exc:
        log.warning("round %s, phase %s: %d answers refused together (%s); sending one by one",
                    round_id, phase, len(answers), exc)
        for client, body in answers:
            with client.attempt(round_id, phase):
                await client.post(round_id, phase, body)
        return
    except httpx.TransportError as exc:
        log.warning("round %s, phase %s: cloud unreachable (%s); answered at the next poll", round_id, phase, exc)
        return
    for (client, _), item in zip(answers, result.results, strict=True):
        if item.status == 200:
            client.sent(round_id, phase)
        else:
            client.refused(round_id, phase, f"{item.status}: {item.detail}")
