"""A gateway's Prometheus metrics, served by prometheus-client's own HTTP server when the daemon is started with
``--metrics-port`` (bound to ``--metrics-host``, loopback by default: the figures name devices' counts and the
node's privacy spend, so expose them past the host only behind a scraper you trust).

Counters are incremented by the ingest as messages are handled (`count_stored`, `count_quarantined`,
`count_store_failure`); gauges are read at scrape time from the daemon's own status (`StatusCollector`, the same
document it writes to status.json): readings stored, devices, quarantined messages, the outbox (signed submissions
spooled until the cloud acknowledges them), rounds answered, cumulative epsilon with its delta, unit and accountant,
the ingest's health. Every metric carries the gateway's id, so one process may serve several.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from federation.metric_labels import first_match
from federation.status import GatewayStatus

REGISTRY = CollectorRegistry()
INGESTED = Counter("wearfed_gateway_readings_ingested", "Readings stored (new), as released by devices",
                   ["gateway"], registry=REGISTRY)
DEDUPLICATED = Counter("wearfed_gateway_readings_deduplicated",
                       "Readings dropped because their (device, epoch, seq) was already stored: a redelivery or resend",
                       ["gateway"], registry=REGISTRY)
QUARANTINED = Counter("wearfed_gateway_messages_quarantined", "MQTT messages quarantined instead of stored, by reason",
                      ["gateway", "reason"], registry=REGISTRY)
STORE_FAILURES = Counter("wearfed_gateway_store_failures",
                         "Messages left unacknowledged because the store itself failed (redelivered later)",
                         ["gateway"], registry=REGISTRY)
# a quarantine reason (the ingest's SchemaError text or what went wrong) -> its class (first match wins)
REASON_CLASSES: tuple[tuple[str, str], ...] = (
    (r"unknown device", "unknown_device"),
    (r"revoked by intrusion response", "revoked_device"),
    (r"unexpected topic|does not match topic", "topic_mismatch"),
    (r"timestamp", "timestamp"),
    (r"not in order", "order"),
    (r"ldp header|ldp", "ldp_header"),
    (r"re-use a stored sequence", "sequence_conflict"),
    (r"storage refused|storing failed", "storage"),
    (r"internal error", "internal"),
)


def reason_class(reason: str) -> str:
    return first_match(reason, REASON_CLASSES, "schema")


def count_stored(gateway: str, new: int, duplicates: int) -> None:
    INGESTED.labels(gateway).inc(new)
    DEDUPLICATED.labels(gateway).inc(duplicates)


def count_quarantined(gateway: str, reason: str) -> None:
    QUARANTINED.labels(gateway, reason_class(reason)).inc()


def count_store_failure(gateway: str) -> None:
    STORE_FAILURES.labels(gateway).inc()


class StatusCollector(Collector):
    """Gauges from each registered daemon's status document, read at scrape time."""

    def __init__(self) -> None:
        self._sources: dict[str, Callable[[], GatewayStatus]] = {}
        self._lock = threading.Lock()

    def add(self, gateway: str, status: Callable[[], GatewayStatus]) -> None:
        with self._lock:
            self._sources[gateway] = status

    def remove(self, gateway: str) -> None:
        with self._lock:
            self._sources.pop(gateway, None)

    def collect(self) -> Iterator[Metric]:
        g = {name: GaugeMetricFamily(f"wearfed_gateway_{name}", doc, labels=["gateway"]) for name, doc in (
            ("readings_stored", "Readings in the gateway's store"),
            ("devices", "Devices with readings in the store"),
            ("quarantine_depth", "Messages held in quarantine for a person to look at"),
            ("outbox_depth", "Signed submissions spooled until the cloud acknowledges them"),
            ("rounds_answered", "Rounds this node answered (submitted or refused)"),
            ("ingest_healthy", "1 unless the ingest has failed to store anything for its stuck time"),
            ("ingest_subscribed", "1 while subscribed to the devices' topics"),
            ("drift_reports_sent", "Drift histograms sent to the cloud"),
            ("model_relayed_version", "The model version last relayed to devices"),
            ("withdrawn_devices", "Devices that withdrew consent (their data deleted, later data dropped)"),
            ("withdrawal_deleted_readings", "Readings deleted because their device withdrew consent"),
            ("retention_deleted_readings", "Readings deleted by the retention period"),
            ("consent_reports_pending", "Withdrawal and retention reports not yet acknowledged by the cloud"),
        )}
        eps = GaugeMetricFamily("wearfed_gateway_epsilon", "Cumulative DP-SGD epsilon of this node's training",
                                labels=["gateway", "unit", "delta", "accountant"])
        cap = GaugeMetricFamily("wearfed_gateway_epsilon_cap", "The node's own cumulative epsilon cap",
                                labels=["gateway"])
        with self._lock:
            sources = dict(self._sources)
        for gw, status in sorted(sources.items()):
            doc = status()
            node = doc.node
            values = {"readings_stored": doc.ingested, "devices": doc.devices, "quarantine_depth": doc.rejected,
                      "outbox_depth": len(node.outbox) if node else None,
                      "rounds_answered": len(node.answered) if node else None, "ingest_healthy": doc.healthy,
                      "ingest_subscribed": doc.subscribed,
                      "drift_reports_sent": doc.drift.drift_reports_sent if doc.drift else None,
                      "model_relayed_version": doc.relay.model_relayed if doc.relay else None,
                      "withdrawn_devices": doc.consent.withdrawn_devices,
                      "withdrawal_deleted_readings": doc.consent.readings_deleted_by_withdrawal,
                      "retention_deleted_readings": doc.retention.readings_deleted,
                      "consent_reports_pending": doc.consent.reports_pending}
            for name, value in values.items():
                if isinstance(value, bool | int | float):
                    g[name].add_metric([gw], float(value))
            if node is not None:
                privacy = node.privacy
                eps.add_metric([gw, privacy.unit, repr(privacy.delta), privacy.accountant],
                               float(privacy.epsilon_cumulative))
                if privacy.epsilon_cap is not None:
                    cap.add_metric([gw], float(privacy.epsilon_cap))
        yield from g.values()
        yield eps
        yield cap


STATUS = StatusCollector()
REGISTRY.register(STATUS)


@dataclass
class MetricsServer:
    """prometheus-client's HTTP server serving `REGISTRY` (a daemon thread); `close` stops it."""

    gateway: str
    port: int
    _httpd: object

    def close(self) -> None:
        STATUS.remove(self.gateway)
        self._httpd.shutdown()
        self._httpd.server_close()


def serve(gateway: str, status: Callable[[], GatewayStatus], *, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Expose this gateway's metrics on http://host:port/metrics (port 0: a free port, see `.port`)."""
    STATUS.add(gateway, status)
    httpd, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return MetricsServer(gateway=gateway, port=httpd.server_address[1], _httpd=httpd)
