"""Rounds: open (staff), the current round (public: what participants answer), the round report (staff), and the
participants' signed submissions and refusals. The submission body is read raw so its size is bounded before parsing."""

import asyncio

from fastapi import APIRouter, Request

from cloud.api.deps import STAFF, CloudDep, Id, Staff, errors
from cloud.api.readers import Reader
from cloud.errors import TooLarge
from federation.responses import PublicRound, RefusalAck, RoundReport, RoundView, SubmissionAck
from federation.wire import MAX_UPDATE_BYTES, OpenRound, Refusal, Submission

router = APIRouter(tags=["rounds"])


@router.post("/v1/rounds", status_code=201, responses=errors(*STAFF, 409))
def open_round(req: OpenRound, cloud: CloudDep, p: Staff("round.open")) -> RoundView:
    return cloud.rounds.open(req, actor=p.name)


@router.get("/v1/rounds/current", tags=["public"], responses=errors(401, 404))
def current_round(cloud: CloudDep, caller: Reader) -> PublicRound:
    return cloud.rounds.current(participant=caller.participant, staff=caller.staff is not None)


@router.get("/v1/rounds/{round_id}", responses=errors(*STAFF, 404))
def round_report(round_id: Id, cloud: CloudDep, _: Staff("round.read")) -> RoundReport:
    return cloud.rounds.report(round_id)


@router.post("/v1/rounds/{round_id}/updates", tags=["participants"], responses=errors(400, 401, 403, 404, 409))
async def submit(round_id: Id, request: Request, cloud: CloudDep) -> SubmissionAck:
    body = await request.body()  # cloud.ratelimit.Guard stops reading past MAX_UPDATE_BYTES (413)
    if len(body) > MAX_UPDATE_BYTES:
        raise TooLarge(f"body of {len(body)} bytes exceeds {MAX_UPDATE_BYTES}")
    sub = Submission.model_validate_json(body)
    await asyncio.to_thread(cloud.witnesses.before_update, round_id, sub)  # alerts (and holds) a lapsed witness
    return await asyncio.to_thread(cloud.submissions.submit, round_id, sub, body_bytes=len(body))


@router.post("/v1/rounds/{round_id}/refusals", tags=["participants"], responses=errors(400, 401, 403, 404, 409))
def refuse(round_id: Id, msg: Refusal, cloud: CloudDep) -> RefusalAck:
    return cloud.submissions.refuse(round_id, msg)
