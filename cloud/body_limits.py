"""Request body caps per route (`body_limit`): a submission, a region's aggregate and its inputs, and a batch of
secure-aggregation messages get their wire limits, every other JSON request `DEFAULT_BODY_LIMIT`;
`cloud.ratelimit.Guard` enforces them while it streams the body (`BodyTooLarge` past the cap)."""

from __future__ import annotations

import re

from starlette.exceptions import HTTPException

from federation.limits import MAX_REGION_AGGREGATE_BYTES, MAX_REGION_INPUTS_BYTES, MAX_SECAGG_BATCH_BYTES
from federation.wire import MAX_UPDATE_BYTES

DEFAULT_BODY_LIMIT = 64 * 1024  # every JSON request but a submission is far smaller (the largest: a drift report)
BODY_LIMITS = ((re.compile(r"^/v1/rounds/[^/]+/updates$"), MAX_UPDATE_BYTES),
               (re.compile(r"^/v1/rounds/[^/]+/region-aggregates$"), MAX_REGION_AGGREGATE_BYTES),
               (re.compile(r"^/v1/rounds/[^/]+/secagg/batch$"), MAX_SECAGG_BATCH_BYTES),
               (re.compile(r"^/v1/rounds/[^/]+/region-aggregates/[^/]+/inputs$"), MAX_REGION_INPUTS_BYTES))

class BodyTooLarge(HTTPException):
    """The request body passed the route's cap while it was being read."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


def body_limit(path: str) -> int:
    for pattern, limit in BODY_LIMITS:
        if pattern.match(path):
            return limit
    return DEFAULT_BODY_LIMIT
