"""Prometheus metrics (`cloud.metrics`) for callers with ``metrics.read``: a scraper's own user (role ``monitor``),
an operator or an admin. Protected rather than public because they name participants and their privacy spend."""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from cloud.api.deps import Staff

router = APIRouter(tags=["operations"])
# the classic text format every Prometheus server reads (prometheus-client >= 0.22 would announce 1.0.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@router.get("/metrics", response_class=Response)
def metrics(request: Request, _: Staff("metrics.read")) -> Response:
    """Prometheus text exposition format 0.0.4."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)
