"""Intrusion response beside the broker: a burst of ACL denials by one device revokes its broker login.

    Mosquitto's log ──LogTail──> "Denied PUBLISH from <client>" ──count per client in a sliding window──>
        `denials` within `window_s`: contain(client)
            1. its line in the broker's password file is commented out (kept, for the investigation) and the broker
               is sent SIGHUP: Mosquitto re-reads the file and disconnects the client at once (checked on 2.0.11),
               and refuses its reconnects ("not authorised");
            2. the gateway stops accepting its readings (`Revocations`, consulted by the ingest's registry: anything
               still queued for it is quarantined, not stored);
            3. a signed report goes to the cloud (``POST /v1/intrusion/reports``), which raises a compliance alert
               and audits it (`cloud.intrusion_reports`); queued on disk until the cloud acknowledges it.

Only this gateway's devices are contained: those in its device registry (or, with an open registry, ids starting
``<gateway>-`` as `wearfed provision` names them); its own principals (``gateway-<id>``, ``gateway-<id>-relay``)
never are: a denial of those is a configuration fault, logged. A revocation is lifted by an operator: uncomment the
line, SIGHUP the broker, and remove the device from ``revoked-devices.json`` in the state directory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import stat
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from federation.errors import ConfigError
from federation.node_signals import INTRUSION_REPORT_DOMAIN, signed
from federation.runtime import atomic_write_bytes, atomic_write_json, sleep_or_stop
from gateway.broker_log import LogTail, parse_denial
from gateway.registry import DeviceRegistry

log = logging.getLogger(__name__)
REVOKED_FILE = "revoked-devices.json"
REPORTS_FILE = "intrusion-reports.json"
RULE = "acl_denials"
MAX_TRACKED = 10_000  # clients with a window open; the oldest is dropped past it
MAX_TOPICS = 5  # denied topics kept as evidence per containment
RETRY_S = 10.0  # after a report was refused or not delivered


@dataclass(frozen=True)
class AclWatchConfig:
    log_file: Path  # Mosquitto's log (log_dest file ...), written with log_type debug
    passwd_file: Path | None = None  # the broker's password file; None: no revocation at the broker (alert only)
    pid_file: Path | None = None  # the broker's pid file (mosquitto.conf pid_file), for SIGHUP after the edit
    denials: int = 5  # denials of one client within window_s that contain it
    window_s: float = 60.0
    poll_s: float = 0.5

    def __post_init__(self) -> None:
        if self.denials < 1 or not 0 < self.window_s <= 86_400 or self.poll_s <= 0:
            raise ConfigError(f"ACL denial watch: --acl-denials must be >= 1, --acl-window-s in (0, 86400] and the "
                              f"poll > 0 (got {self.denials}, {self.window_s}, {self.poll_s})")


class Revocations:
    """Devices whose broker login this gateway revoked (persisted in the state directory); thread-safe."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / REVOKED_FILE
        self._lock = threading.Lock()
        self._mtime: int | None = None
        self._devices: dict[str, dict] = {}
        self._reload()

    def _reload(self) -> None:
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except OSError:
            self._devices, self._mtime = {}, None  # removed by an operator: nothing revoked
            return
        if mtime == self._mtime:
            return
        try:
            doc = json.loads(self.path.read_text())
            self._devices = {str(k): dict(v) for k, v in doc["devices"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("%s is unreadable (%s); keeping the %d revocations known", self.path, exc, len(self._devices))
        self._mtime = mtime

    def reason(self, device: str) -> str | None:
        with self._lock:
            self._reload()
            rec = self._devices.get(device)
        return None if rec is None else (f"device {device} is revoked by intrusion response ({rec.get('rule')}, "
                                         f"{rec.get('at')})")

    def add(self, device: str, record: dict) -> None:
        with self._lock:
            self._reload()
            self._devices[device] = record
            atomic_write_json(self.path, {"devices": self._devices}, indent=1)
            self._mtime = os.stat(self.path).st_mtime_ns

    def __len__(self) -> int:
        with self._lock:
            self._reload()
            return len(self._devices)


@dataclass
class _Window:
    times: deque = field(default_factory=deque)
    topics: list[str] = field(default_factory=list)
    first_wall: float = 0.0


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


class AclWatch:
    def __init__(self, gateway: str, state_dir: Path, cfg: AclWatchConfig, *, registry: DeviceRegistry,
                 revocations: Revocations) -> None:
        self.gateway = gateway
        self.cfg = cfg
        self.registry = registry
        self.revocations = revocations
        self.reports_path = state_dir / REPORTS_FILE
        self.tail = LogTail(cfg.log_file)
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()  # the pending reports file: written by the watcher and the sender
        self.denials_seen = 0
        self.denials_ignored = 0  # of clients that are not this gateway's devices
        self.contained: list[dict] = []

    # -- detection -------------------------------------------------------------------------------------------
    def owns(self, client: str) -> bool:
        if client.startswith("gateway-"):  # this or another gateway's own principals: never revoked here
            return False
        return client.startswith(f"{self.gateway}-") if self.registry.open else client in self.registry

    def poll(self) -> list[dict]:
        """Read what the broker logged since the last call; contain every client that reached the threshold."""
        out = []
        for _ in range(64):  # catch up with a fast-growing log, a bounded amount per poll
            out += self._read()
            if self.tail.caught_up:
                break
        return out

    def _read(self) -> list[dict]:
        out = []
        for line in self.tail.read_lines():
            denial = parse_denial(line)
            if denial is None:
                continue
            self.denials_seen += 1
            if not self.owns(denial.client):
                self.denials_ignored += 1
                if denial.client.startswith(f"gateway-{self.gateway}"):
                    log.error("gateway %s: the broker denied its own principal %s on %r: check the ACL",
                              self.gateway, denial.client, denial.topic)
                continue
            if self.revocations.reason(denial.client) is not None:
                continue  # already contained (denials logged before the broker reloaded)
            if (done := self._count(denial.client, denial.topic)) is not None:
                out.append(self.contain(denial.client, *done))
        return out

    def _count(self, client: str, topic: str) -> tuple[int, float, list[str]] | None:
        now = time.monotonic()
        w = self._windows.get(client)
        if w is None:
            w = self._windows[client] = _Window()
            while len(self._windows) > MAX_TRACKED:
                del self._windows[next(iter(self._windows))]
        while w.times and now - w.times[0] > self.cfg.window_s:
            w.times.popleft()
        if not w.times:
            w.first_wall, w.topics = time.time(), []
        w.times.append(now)
        if topic not in w.topics and len(w.topics) < MAX_TOPICS:
            w.topics.append(topic[:200])
        if len(w.times) < self.cfg.denials:
            return None
        del self._windows[client]
        return len(w.times), w.first_wall, w.topics

    # -- containment -----------------------------------------------------------------------------------------
    def contain(self, client: str, count: int, first_wall: float, topics: list[str]) -> dict:
        revoked, action = self._revoke_login(client)
        actions = [action, self._reload_broker()] if revoked else [action]
        at = time.time()
        self.revocations.add(client, {"rule": RULE, "at": _iso(at), "count": count})
        actions.append("the gateway accepts none of its readings")
        report = {"participant": self.gateway, "report_id": uuid.uuid4().hex, "rule": RULE, "subject": client,
                  "subject_kind": "device", "count": count, "threshold": self.cfg.denials,
                  "window_s": self.cfg.window_s, "first_at": round(first_wall, 3), "contained_at": round(at, 3),
                  "topics": topics, "actions": actions}
        with self._lock:
            pending = self._pending()
            pending.append(report)
            atomic_write_json(self.reports_path, {"pending": pending}, indent=1)
        self.contained.append(report)
        log.warning("gateway %s: intrusion response: %d ACL denials of %s in %g s: %s", self.gateway, count, client,
                    self.cfg.window_s, "; ".join(actions))
        return report

    def _revoke_login(self, client: str) -> tuple[bool, str]:
        path = self.cfg.passwd_file
        if path is None:
            return False, "broker login not revoked: no password file configured (--broker-passwd-file)"
        try:
            st = os.stat(path)
            lines = path.read_bytes().decode().splitlines(keepends=True)
            prefix = f"{client}:"
            hit = [i for i, ln in enumerate(lines) if ln.startswith(prefix)]
            if not hit:
                return False, f"no broker login {client} in {path} to revoke"
            stamp = f"# revoked by wearfed intrusion response {_iso(time.time())} ({RULE}): "
            for i in hit:
                lines[i] = stamp + lines[i]
            atomic_write_bytes(path, "".join(lines).encode(), mode=stat.S_IMODE(st.st_mode))
            if os.geteuid() == 0:
                os.chown(path, st.st_uid, st.st_gid)  # the broker (often its own user) must still read it
        except (OSError, UnicodeDecodeError) as exc:
            log.error("gateway %s: cannot revoke %s in %s: %s", self.gateway, client, path, exc)
            return False, f"broker login NOT revoked: {path}: {exc}"
        return True, f"broker login {client} revoked in {path}"

    def _reload_broker(self) -> str:
        if self.cfg.pid_file is None:
            return "broker not reloaded: no pid file configured (--broker-pid-file); reload it to disconnect"
        try:
            pid = int(self.cfg.pid_file.read_text().strip())
            if pid <= 1:
                raise ValueError(f"pid {pid}")
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError) as exc:
            log.error("gateway %s: cannot reload the broker (%s): %s", self.gateway, self.cfg.pid_file, exc)
            return f"broker NOT reloaded: {exc}"
        return f"broker (pid {pid}) reloaded: the client is disconnected and cannot log in again"

    # -- reports to the cloud --------------------------------------------------------------------------------
    def _pending(self) -> list[dict]:
        try:
            return list(json.loads(self.reports_path.read_text())["pending"])
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("%s is unreadable (%s); starting a new queue", self.reports_path, exc)
            return []

    def pending_reports(self) -> list[dict]:
        with self._lock:
            return self._pending()

    def report_sent(self, report_id: str) -> None:
        with self._lock:
            pending = [r for r in self._pending() if r.get("report_id") != report_id]
            atomic_write_json(self.reports_path, {"pending": pending}, indent=1)

    def status(self) -> dict:
        return {"acl_watch": {"log": str(self.cfg.log_file), "denials": self.denials_seen,
                              "denials_not_ours": self.denials_ignored, "contained": len(self.contained),
                              "revoked_devices": len(self.revocations), "reports_pending": len(self.pending_reports()),
                              "lines_read": self.tail.lines_read, "long_lines_dropped": self.tail.long_lines_dropped,
                              "rotations": self.tail.rotations, "truncations": self.tail.truncations}}

    async def run(self, stop: asyncio.Event) -> None:
        while True:
            try:
                await asyncio.to_thread(self.poll)
            except Exception:  # a watcher bug must never stop the gateway
                log.exception("gateway %s: the ACL denial watch failed a poll", self.gateway)
            if await sleep_or_stop(stop, self.cfg.poll_s):
                self.tail.close()
                return


async def send_reports(watch: AclWatch, node, stop: asyncio.Event, *, interval_s: float = 0.5) -> None:  # noqa: ANN001
    """Post every pending report, signed with the node's key, once the node is enrolled, until stopped."""
    from gateway.errors import CloudRejected

    while True:
        wait = interval_s
        if node.enrolled:
            for body in await asyncio.to_thread(watch.pending_reports):
                try:
                    await node.cloud.request("POST", "/v1/intrusion/reports",
                                             json=signed(node.key, body, INTRUSION_REPORT_DOMAIN))
                except CloudRejected as exc:
                    log.error("intrusion report %s refused by the cloud: %s (kept, retried)", body["report_id"], exc)
                    wait = RETRY_S
                    break
                except Exception as exc:  # unreachable: kept for the next attempt
                    log.warning("intrusion report %s not delivered (%s); retrying", body["report_id"], exc)
                    wait = RETRY_S
                    break
                await asyncio.to_thread(watch.report_sent, body["report_id"])
        if await sleep_or_stop(stop, wait):
            return
