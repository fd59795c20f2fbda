"""`wearfed gateway run`: MQTT ingest into the local store plus the participant loop, until SIGTERM.

`wearfed gateway ingest` runs the ingest alone (no federation). Both write `status.json` in the state
directory every second (atomically): counts, rounds answered, privacy spent, last model relayed; with
``--metrics-port`` both also serve Prometheus metrics (`gateway.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from federation.runtime import atomic_write_json, install_stop_signals
from federation.status import GatewayStatus
from federation.windows import NO_DENOISE, Denoise, Windows, windows_from_series
from gateway import metrics
from gateway.acl_watch import AclWatch, AclWatchConfig, Revocations
from gateway.acl_watch import send_reports as send_intrusion_reports
from gateway.consent import CONSENT_KEYS, ConsentKeys, RetentionConfig, handle_withdrawal, run_retention, send_reports
from gateway.drift import DEFAULT_DRIFT, DriftReporter, DriftSettings
from gateway.ingest import (
    DEFAULT_MAX_FUTURE_S,
    STUCK_AFTER_S,
    BrokerAccess,
    IngestHealth,
    PoolMembership,
    ingest_forever,
)
from gateway.node import NodeConfig, ParticipantNode
from gateway.registry import DeviceRegistry
from gateway.relay import ModelRelay
from gateway.store import ReadingStore

log = logging.getLogger(__name__)
write_json_atomic = atomic_write_json  # the name gateway.hospital and gateway.pool import (with install_stop_signals)


@dataclass(frozen=True)
class IngestConfig:
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    username: str | None = None  # the ingest's principal (gateway-<gw>)
    password: str | None = None
    relay_username: str | None = None  # the model relay's own principal (gateway-<gw>-relay), never the ingest's
    relay_password: str | None = None
    ca_file: Path | None = None  # TLS for both clients, verifying the broker against this CA
    cert_file: Path | None = None  # the ingest's client certificate (mutual TLS)
    key_file: Path | None = None
    relay_cert_file: Path | None = None  # the relay's client certificate
    relay_key_file: Path | None = None
    devices_file: Path | None = None
    max_future_s: float = DEFAULT_MAX_FUTURE_S
    release_key: str | None = None  # base64 Ed25519 key that signs model releases; None: trust on first use
    stuck_after_s: float = STUCK_AFTER_S  # failing this long without storing anything: status says unhealthy
    metrics_port: int | None = None  # serve Prometheus metrics (gateway.metrics) on this port; 0: any free port
    metrics_host: str = "127.0.0.1"
    consent_keys: Path | None = None  # devices' consent public keys (default <state-dir>/consent-keys.txt)
    retention: RetentionConfig = RetentionConfig()
    pool_group: str | None = None  # a gateway pool (docs/scale.md): MQTT 5 shared subscription group
    pool_member: str | None = None  # this member's name in the pool (its client id is gateway-<gw>-<member>)
    store_url: str | None = None  # the pool's shared PostgreSQL reading store
    acl_watch: AclWatchConfig | None = None  # watch the broker's log for ACL denials (gateway.acl_watch)

    def pool(self) -> PoolMembership | None:
        return None if self.pool_group is None else PoolMembership(self.pool_group, self.pool_member or "")

    def ingest_access(self) -> BrokerAccess:
        return BrokerAccess(host=self.broker_host, port=self.broker_port, username=self.username,
                            password=self.password, ca_file=self.ca_file, cert_file=self.cert_file,
                            key_file=self.key_file)

    def relay_access(self) -> BrokerAccess:
        return BrokerAccess(host=self.broker_host, port=self.broker_port, username=self.relay_username,
                            password=self.relay_password, ca_file=self.ca_file, cert_file=self.relay_cert_file,
                            key_file=self.relay_key_file)


def store_windows(store: ReadingStore, cutoff: float | None, denoise: Denoise = NO_DENOISE) -> Windows:
    """Training windows from every device's telemetry (`ReadingStore.series()`: device id -> PatientSeries, or
    (times, values) from an older store) on the 5-min grid, up to `cutoff`; each window keeps its device, the unit
    user-level DP-SGD samples and clips (one wearer per device)."""
    return windows_from_series(store.series(), cutoff=cutoff, denoise=denoise)



def open_registry(state_dir: Path, devices_file: Path | None) -> DeviceRegistry:
    """`--devices-file`, else `<state-dir>/devices.txt` if provisioned there, else an open registry (warned); devices
    revoked by intrusion response (`gateway.acl_watch`, persisted in the state directory) are refused either way."""
    if devices_file is None and (state_dir / "devices.txt").exists():
        devices_file = state_dir / "devices.txt"
    return DeviceRegistry(devices_file, revoked=Revocations(state_dir))


async def stop_node(node_task: asyncio.Task, node: ParticipantNode) -> None:
    """Let an in-flight round finish (its submission is checkpointed in the outbox first), then cancel.

    A node still trying to enroll has nothing in hand and is cancelled at once.
    """
    try:
        await asyncio.wait_for(asyncio.shield(node_task), timeout=5 if node.enrolled else 0.1)
    except TimeoutError:
        node_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await node_task
    except Exception:
        log.exception("participant loop failed")


async def run_gateway(cfg: NodeConfig, ingest_cfg: IngestConfig, *, denoise: Denoise = NO_DENOISE,
                      drift: DriftSettings | None = DEFAULT_DRIFT) -> None:
    """Ingest plus the participant loop (train, submit, relay new models) and drift reports until SIGTERM."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    store = ReadingStore(cfg.state_dir / "readings.sqlite")
    relay = ModelRelay(cfg.participant_id, cfg.state_dir, access=ingest_cfg.relay_access(),
                       release_key=ingest_cfg.release_key)
    node = ParticipantNode(cfg, lambda cutoff: store_windows(store, cutoff, denoise), on_round=relay.after_round)
    reporter = None if drift is None else DriftReporter(cfg.participant_id, node.key, cfg.state_dir / "readings.sqlite",
                                                        cfg.state_dir, drift)
    await _serve(cfg.participant_id, cfg.state_dir, ingest_cfg, store, node=node, relay=relay, drift=reporter)


async def run_ingest(gateway: str, state_dir: Path, ingest_cfg: IngestConfig) -> None:
    """Ingest only (no federation) until SIGTERM."""
    state_dir.mkdir(parents=True, exist_ok=True)
    await _serve(gateway, state_dir, ingest_cfg, open_store(state_dir, ingest_cfg), node=None, relay=None)


def open_store(state_dir: Path, cfg: IngestConfig) -> ReadingStore:
    """The local SQLite store, or a pool's shared PostgreSQL store (`gateway.pg_store`)."""
    if cfg.store_url is None:
        return ReadingStore(state_dir / "readings.sqlite")
    from gateway.pg_store import PgReadingStore

    return PgReadingStore(cfg.store_url, member=cfg.pool_member or "")  # same interface


async def _serve(gateway: str, state_dir: Path, ingest_cfg: IngestConfig, store: ReadingStore, *,
                 node: ParticipantNode | None, relay: ModelRelay | None, drift: DriftReporter | None = None) -> None:
    registry = open_registry(state_dir, ingest_cfg.devices_file)
    stop = asyncio.Event()
    install_stop_signals(stop)
    health = IngestHealth(stuck_after_s=ingest_cfg.stuck_after_s)
    keys_path = ingest_cfg.consent_keys or (state_dir / CONSENT_KEYS if (state_dir / CONSENT_KEYS).exists() else None)
    keys = ConsentKeys(keys_path)

    def on_consent(device: str, payload: bytes) -> str:
        return handle_withdrawal(store, gateway, device, payload, keys=keys, state_dir=state_dir,
                                 files=[registry.path, keys_path])

    ingest = asyncio.create_task(ingest_forever(
        store, gateway, access=ingest_cfg.ingest_access(), registry=registry, max_future_s=ingest_cfg.max_future_s,
        health=health, on_consent=on_consent, pool=ingest_cfg.pool()))
    retention = asyncio.create_task(run_retention(store, ingest_cfg.retention, stop))
    reports = asyncio.create_task(send_reports(store, node, stop)) if node else None
    watch = None if ingest_cfg.acl_watch is None else AclWatch(gateway, state_dir, ingest_cfg.acl_watch,
                                                                registry=registry, revocations=registry.revoked)
    watching = [asyncio.create_task(watch.run(stop))] if watch else []
    if watch and node:
        watching.append(asyncio.create_task(send_intrusion_reports(watch, node, stop)))

    def status() -> GatewayStatus:
        return GatewayStatus(updated=time.time(), pid=os.getpid(), **health.doc(),
                             retention_days=ingest_cfg.retention.days,
                             registry_devices=None if registry.open else len(registry), **store.counts(),
                             **store.governance_counts(), node=node.status() if node else None,
                             relay=relay.status() if relay else None, drift=drift.status() if drift else None,
                             acl_watch=watch.status()["acl_watch"] if watch else None)

    async def report() -> None:
        last, failed = None, None
        while True:
            try:
                doc = status()
                if not doc.healthy and doc.ingest.state != last:
                    log.error("gateway %s: ingest is %s: %s", gateway, doc.ingest.state, doc.ingest.last_error)
                last, failed = doc.ingest.state, None
                atomic_write_json(state_dir / "status.json", doc.model_dump(mode="json"))
            except Exception as exc:  # a status that cannot be built or written must not end the reports for good
                if repr(exc) != failed:
                    log.exception("gateway %s: status.json not written", gateway)
                failed = repr(exc)
            await asyncio.sleep(1.0)

    reporter = asyncio.create_task(report())
    exporter = None
    if ingest_cfg.metrics_port is not None:
        exporter = metrics.serve(gateway, status, port=ingest_cfg.metrics_port, host=ingest_cfg.metrics_host)
        log.info("gateway %s: metrics on http://%s:%d/metrics", gateway, ingest_cfg.metrics_host, exporter.port)
        atomic_write_json(state_dir / "metrics.json", {"port": exporter.port, "host": ingest_cfg.metrics_host})
    node_task = asyncio.create_task(node.run(stop)) if node else None
    drift_task = asyncio.create_task(drift.run(node, stop)) if drift and node else None
    await stop.wait()
    log.info("gateway %s stopping", gateway)
    if node_task is not None:
        await stop_node(node_task, node)
    tasks = [t for t in (ingest, reporter, drift_task, retention, reports, *watching) if t is not None]
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if exporter is not None:
        exporter.close()
    atomic_write_json(state_dir / "status.json", status().model_copy(update={"stopped": True}).model_dump(mode="json"))
    if node is not None:
        await node.aclose()
    store.close()
