"""Dependencies shared by the routers: the assembled cloud, and `require(action)`, which checks the caller's bearer
token against P(role, action) (`cloud.rbac`; denials are audited by `cloud.access`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Header, Path, Query, Request

from cloud.access import Principal
from cloud.assembly import Cloud
from federation.responses import ErrorBody
from federation.wire import PARTICIPANT_ID

MAX_ID = 2**31 - 1  # every id and count fits PostgreSQL's INTEGER (and SQLite's 64-bit one): 422 beyond, never 500
Id = Annotated[int, Path(ge=0, le=MAX_ID)]
Size = Annotated[int, Query(ge=0, le=MAX_ID)]
ParticipantId = Annotated[str, Path(pattern=PARTICIPANT_ID, max_length=64)]


def errors(*statuses: int) -> dict[int | str, dict]:
    """The refusals a route declares in the OpenAPI document (`cloud.app` adds 413, 422 and 429 to every route and
    gives each the `ErrorBody` schema)."""
    return {status: {"model": ErrorBody, "description": DESCRIPTIONS[status]} for status in statuses}


DESCRIPTIONS = {400: "malformed or inconsistent", 401: "no valid bearer token or signature",
                403: "the caller may not do this", 404: "no such object", 409: "wrong state, duplicate or late",
                413: "request body too large (streaming cap per route)", 422: "request does not match the schema",
                429: "rate limit, or locked after repeated authentication failures (Retry-After)"}
STAFF = (401, 403)


def get_cloud(request: Request) -> Cloud:
    return request.app.state.cloud


CloudDep = Annotated[Cloud, Depends(get_cloud)]


def require(action: str) -> Callable[..., Principal]:
    def dependency(request: Request, authorization: str = Header(default="")) -> Principal:
        return get_cloud(request).access.authorize(authorization, action, path=request.url.path)

    dependency.__name__ = f"require_{action.replace('.', '_')}"
    return dependency


def Staff(action: str) -> type[Principal]:  # noqa: N802 - reads as a type in signatures
    """`p: Staff("round.open")`: the authorised caller of a staff route."""
    return Annotated[Principal, Depends(require(action))]  # type: ignore[return-value]
