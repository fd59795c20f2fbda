"""The cloud's Prometheus metrics (prometheus-client), served at ``GET /metrics`` to callers with ``metrics.read``.

Three sources, so no unit of the cloud carries metrics code:

- `RequestMetrics`, a pure ASGI middleware: requests by method, route template and status; latency to the response's
  first byte per route (a histogram); authentication (401) and authorisation (403) failures.
- the audit ledger, followed at each scrape from where the last scrape stopped (from entry 0 at the first, so the
  counters hold totals since the federation began, across restarts): submissions accepted and refused (by reason
  class and status), participants' own refusals, round durations (opened -> candidate registered or failed),
  lockouts and counted request failures (``access.locked`` / ``access.failures``: the front door, `cloud.ratelimit`).
- the database at scrape time (`StateCollector`): cumulative epsilon, cap and halted flag per participant (labelled with
  delta, unit and accountant), rounds per state, pending approvals, alerts per kind, audit ledger size, latest drift
  KL per participant, the custodian's state.

Label values are bounded: routes are templates ("unmatched" for any other path), refusal reasons are classes
(`refusal_class`), participants are enrolled ids.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from cloud.assembly import Cloud
from cloud.db import Participant, Round, Update
from cloud.governance_db import DriftReportRow, PendingAction
from cloud.record_db import Alert, Event, PrivacySpend
from federation import dp_accounting
from federation.metric_labels import first_match

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ROUND_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 4 * 3600.0)
FOLLOW_BATCH = 5000
# what a refused submission's reason says -> its class (first match wins); see cloud.submissions and cloud.privacy
REFUSAL_CLASSES: tuple[tuple[str, str], ...] = (
    (r"privacy cap", "privacy_cap"),
    (r"understates", "epsilon_understated"),
    (r"history", "privacy_history"),
    (r"delta .* exceeds", "delta_too_large"),
    (r"halted", "halted"),
    (r"late|deadline|not collecting", "late"),
    (r"already submitted|identical ciphertext|already received", "duplicate"),
    (r"not expected", "not_expected"),
    (r"based on model", "stale_base_model"),
    (r"signature|not enrolled|bearer token", "authentication"),
    (r"secure aggregation|U2|phase|mask", "secure_aggregation"),
    (r"ciphertext|base64|sha256|values|residue|envelope", "malformed_update"),
    (r"too large|exceeds \d+", "too_large"),
)


def refusal_class(reason: str) -> str:
    return first_match(reason, REFUSAL_CLASSES, "other")


class RequestMetrics:
    """ASGI middleware: count and time every HTTP request by its route template."""

    def __init__(self, app: Callable, *, metrics: CloudMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        seen: dict[str, float] = {}

        async def watched(message: dict) -> None:
            if message["type"] == "http.response.start":
                seen["status"], seen["seconds"] = message["status"], time.perf_counter() - t0
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe_request(scope.get("method", ""), route, int(seen.get("status", 500)),
                                         seen.get("seconds", time.perf_counter() - t0))


class StateCollector(Collector):
    """Gauges read from the database at each scrape."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud

    def collect(self) -> Iterator[Metric]:
        c = self.cloud
        eps = GaugeMetricFamily("wearfed_cloud_participant_epsilon",
                                "Cumulative DP-SGD epsilon per participant, recomputed by the cloud's privacy ledger",
                                labels=["participant", "unit", "delta", "accountant"])
        cap = GaugeMetricFamily("wearfed_cloud_participant_epsilon_cap", "The participant's cumulative epsilon cap",
                                labels=["participant"])
        halted = GaugeMetricFamily("wearfed_cloud_participant_halted", "1 if the participant is halted",
                                   labels=["participant"])
        rounds = GaugeMetricFamily("wearfed_cloud_rounds", "Rounds per state", labels=["state"])
        alerts = GaugeMetricFamily("wearfed_cloud_alerts", "Compliance alerts raised, per kind", labels=["kind"])
        kl = GaugeMetricFamily("wearfed_cloud_drift_kl_nats", "KL of the participant's latest scored drift report",
                               labels=["participant"])
        with c.store.read() as s:
            for p in s.scalars(select(Participant).order_by(Participant.id)):
                last = c.participants.last_spend(s, p.id)
                env = s.scalar(select(Update.envelope).where(Update.participant == p.id)
                               .order_by(Update.id.desc()).limit(1))
                unit = str((env or {}).get("dp", {}).get("unit") or dp_accounting.DEFAULT_UNIT)
                if last is not None:
                    eps.add_metric([p.id, unit, repr(last.delta), last.accountant], last.epsilon_recomputed)
                limit = c.participants.cap(p)
                if limit is not None:
                    cap.add_metric([p.id], limit)
                halted.add_metric([p.id], 1.0 if p.halted else 0.0)
            for state, n in s.execute(select(Round.state, func.count()).group_by(Round.state)):
                rounds.add_metric([state], n)
            for kind, n in s.execute(select(Alert.kind, func.count()).group_by(Alert.kind)):
                alerts.add_metric([kind], n)
            latest = {pid: value for pid, value in s.execute(
                select(DriftReportRow.participant, DriftReportRow.kl).where(DriftReportRow.kl.is_not(None))
                .order_by(DriftReportRow.id))}
            for pid, value in sorted(latest.items()):
                kl.add_metric([pid], value)
            pending = s.scalar(select(func.count()).select_from(PendingAction)
                               .where(PendingAction.state == "pending")) or 0
            size = s.scalar(select(func.count()).select_from(Event)) or 0
            spends = s.scalar(select(func.count()).select_from(PrivacySpend)) or 0
        yield from (eps, cap, halted, rounds, alerts, kl)
        yield GaugeMetricFamily("wearfed_cloud_pending_approvals", "Two-person requests awaiting a decision",
                                value=pending)
        yield GaugeMetricFamily("wearfed_cloud_audit_entries", "Entries in the audit ledger", value=size)
        yield GaugeMetricFamily("wearfed_cloud_privacy_ledger_rows", "Accepted privacy spends", value=spends)
        yield GaugeMetricFamily("wearfed_cloud_custodian_unsealed", "1 if the key custodian can decrypt",
                                value=1.0 if c.keys.status().state == "unsealed" else 0.0)


class CloudMetrics:
    """One registry per app (tests build many apps in one process)."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.registry = r = CollectorRegistry()
        self.requests = Counter("wearfed_cloud_http_requests", "HTTP requests by method, route template and status",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("wearfed_cloud_http_request_duration_seconds",
                                 "Time to the response's first byte, by route template", ["method", "route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.auth_failures = Counter("wearfed_cloud_auth_failures",
                                     "Requests refused for a missing or unknown token or signature (401) or a role "
                                     "without the permission (403)", ["status"], registry=r)
        self.accepted = Counter("wearfed_cloud_submissions_accepted", "Masked, encrypted updates accepted",
                                registry=r)
        self.refused = Counter("wearfed_cloud_submissions_refused", "Updates the cloud refused, by reason class",
                               ["reason", "status"], registry=r)
        self.participant_refusals = Counter("wearfed_cloud_participant_refusals",
                                            "Rounds a participant declined with a signed refusal", registry=r)
        self.round_duration = Histogram("wearfed_cloud_round_duration_seconds",
                                        "Round opened -> candidate registered (completed) or failed",
                                        ["outcome"], buckets=ROUND_BUCKETS, registry=r)
        self.lockouts = Counter("wearfed_cloud_lockouts", "Addresses or tokens locked out after repeated failures",
                                registry=r)
        self.failures_counted = Counter("wearfed_cloud_request_failures",
                                        "Refused requests the front door counted per window, by status",
                                        ["status"], registry=r)
        r.register(StateCollector(cloud))
        self._lock = threading.Lock()
        self._next_seq = 0
        self._opened: dict[int, datetime] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        if status in (401, 403):
            self.auth_failures.labels(str(status)).inc()

    def follow_ledger(self) -> int:
        """Count the audit entries appended since the last call; returns how many were read."""
        read = 0
        with self._lock:
            while True:
                with self.cloud.store.read() as s:
                    rows = s.execute(select(Event.seq, Event.at, Event.kind, Event.detail)
                                     .where(Event.seq >= self._next_seq).order_by(Event.seq)
                                     .limit(FOLLOW_BATCH)).all()
                for seq, at, kind, detail in rows:
                    self._count(kind, at, detail or {})
                    self._next_seq = seq + 1
                read += len(rows)
                if len(rows) < FOLLOW_BATCH:
                    return read

    def _count(self, kind: str, at: str, d: dict) -> None:
        if kind == "update.accepted":
            self.accepted.inc()
        elif kind == "update.rejected" or (kind == "access.denied" and d.get("action") == "submit"):
            # a refusal with status 401/403 (signature, privacy cap, halted) is audited as access.denied
            self.refused.labels(refusal_class(str(d.get("reason", ""))), str(d.get("status", ""))).inc()
        elif kind == "round.refused":
            self.participant_refusals.inc()
        elif kind == "round.opened" and isinstance(d.get("round"), int):
            self._opened[d["round"]] = datetime.fromisoformat(at)
        elif kind == "round.state" and d.get("state") in ("completed", "failed"):
            opened = self._opened.pop(d.get("round"), None)
            if opened is not None:
                seconds = (datetime.fromisoformat(at) - opened).total_seconds()
                self.round_duration.labels(d["state"]).observe(max(0.0, seconds))
        elif kind == "access.locked":
            self.lockouts.inc()
        elif kind == "access.failures":
            for status, n in (d.get("by_status") or {}).items():
                if isinstance(n, int) and n > 0:
                    self.failures_counted.labels(str(status)).inc(n)

    def render(self) -> bytes:
        self.follow_ledger()
        return generate_latest(self.registry)


def install(app, cloud: Cloud) -> CloudMetrics:  # noqa: ANN001 - a FastAPI app
    """Give `app` its metrics (``app.state.metrics``) and the request middleware."""
    app.state.metrics = CloudMetrics(cloud)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    return app.state.metrics
