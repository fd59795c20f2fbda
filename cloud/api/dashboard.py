"""The compliance dashboard: its page and static assets (public: they hold no data), who the caller is and what it may
do, the read models no other route serves (participants with halt reasons, rounds, alerts, drift over time), the
audit ledger's on-demand verification, and the live change feed (server-sent events). Data routes check
`cloud.rbac` like every other route; the page reads the rest of the API with the user's own token."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response, StreamingResponse

from cloud import rbac
from cloud.api.deps import STAFF, Size, Staff, errors, get_cloud
from cloud.assembly import Cloud
from cloud.dashboard.feed import ChangeFeed
from cloud.dashboard.views import (
    AlertsView,
    DashboardViews,
    DriftHistory,
    LedgerVerification,
    ParticipantStatus,
    RoundSummary,
)
from cloud.errors import NotFound
from federation.responses import Response as Model

router = APIRouter(tags=["dashboard"])

STATIC = resources.files("cloud.dashboard") / "static"
MEDIA = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
# the page runs only its own scripts and talks only to this origin; no inline script, no framing
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


class Session(Model):
    name: str
    role: str
    permissions: list[str]  # actions of cloud.rbac.PERMISSIONS this role may take
    approvers: dict[str, list[str]]  # two-person actions -> roles that may approve them


def _views(request: Request) -> DashboardViews:
    state = request.app.state
    if getattr(state, "dashboard_views", None) is None:
        cloud: Cloud = get_cloud(request)
        state.dashboard_views = DashboardViews(cloud.store, cloud.participants, cloud.evaluations,
                                               drift_threshold=cloud.drift.config.threshold)
    return state.dashboard_views


def _feed(request: Request) -> ChangeFeed:
    state = request.app.state
    if getattr(state, "dashboard_feed", None) is None:
        cloud: Cloud = get_cloud(request)
        state.dashboard_feed = ChangeFeed(cloud.store, cloud.access)
    return state.dashboard_feed


def _asset(name: str) -> Response:
    path = STATIC / name
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    if "/" in name or "\\" in name or name.startswith(".") or suffix not in MEDIA or not path.is_file():
        raise NotFound(f"no dashboard asset {name!r}")
    return Response(path.read_bytes(), media_type=MEDIA[suffix], headers=PAGE_HEADERS)


@router.get("/dashboard", include_in_schema=False)
def page() -> Response:
    return _asset("index.html")


@router.get("/dashboard/static/{name}", include_in_schema=False)
def asset(name: str) -> Response:
    return _asset(name)


@router.get("/v1/dashboard/session", responses=errors(*STAFF))
def session(p: Staff("dashboard.read")) -> Session:
    return Session(name=p.name, role=p.role,
                   permissions=sorted(a for a in rbac.PERMISSIONS if rbac.allowed(p.role, a)),
                   approvers={a: sorted(r) for a, r in rbac.TWO_PERSON.items()})


@router.get("/v1/dashboard/participants", tags=["participants"], responses=errors(*STAFF))
def participants(request: Request, _: Staff("participant.list")) -> list[ParticipantStatus]:
    """Participants with their cumulative epsilon (delta, accountant, unit), cap, and why a halted one is halted."""
    return _views(request).participant_status()


@router.get("/v1/dashboard/rounds", tags=["rounds"], responses=errors(*STAFF))
def rounds(request: Request, _: Staff("round.read"), limit: Size = 50) -> list[RoundSummary]:
    """The newest rounds, each with its contributors, refusals, who acted, metrics and gate results by source."""
    return _views(request).rounds(limit=min(max(limit, 1), 500))


@router.get("/v1/dashboard/alerts", tags=["privacy"], responses=errors(*STAFF))
def alerts(request: Request, _: Staff("alerts.read")) -> AlertsView:
    """Compliance alerts (cap reached, drift), refused submissions and messages, access denials and lockouts."""
    return _views(request).alerts()


@router.get("/v1/drift/history", tags=["governance"], responses=errors(*STAFF))
def drift_history(request: Request, _: Staff("round.read")) -> DriftHistory:
    """Every drift report's KL score per participant over reading time, with the alert threshold."""
    return _views(request).drift_history()


@router.post("/v1/audit/verify", tags=["audit"], responses=errors(*STAFF))
def verify(request: Request, p: Staff("audit.verify")) -> LedgerVerification:
    """Verify the audit ledger now against this cloud's pinned log key (the result is itself audited)."""
    return _views(request).verify_ledger(p.name)


@router.get("/v1/dashboard/events", response_class=StreamingResponse, responses=errors(*STAFF))
def events(request: Request, p: Staff("dashboard.read"), authorization: str = Header(default=""),
           last_event_id: str | None = Header(default=None)) -> StreamingResponse:
    """Server-sent events: a ``change`` event naming the topics (routes) to re-read whenever the audit ledger grows,
    filtered to what the caller's role may read (cloud.dashboard.feed)."""
    last = int(last_event_id) if last_event_id is not None and last_event_id.strip().lstrip("-").isdigit() else None
    stream = _feed(request).stream(p, authorization, path=request.url.path, last_seq=last)
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
