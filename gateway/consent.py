"""The gateway's side of consent: signed withdrawals off the devices' consent topics, the purge, retention, and the
reports (counts only) it owes the cloud's audit ledger.

A withdrawal (`federation.consent`) is verified against the device's provisioned consent key (``--consent-keys``,
default ``<state-dir>/consent-keys.txt``: ``<device> <base64 public key>`` per line). A verified one tombstones the
device by pseudonym and deletes its readings and every quarantined message naming it in one transaction
(`ReadingStore.withdraw`); SQLite's secure_delete zeroes the freed cells and the write-ahead log is truncated, then
the device's lines are removed from the registry and consent-key files kept in the state directory. Later readings
of the device are dropped (counted) before anything is stored, so windows, drift reports and every later round are
built without it. A refused withdrawal stores nothing of its message (no quarantine: it would re-introduce the id);
it is counted and logged.

Retention: `run_retention` deletes what was received more than the period ago, every `interval_s`. Reports of
both wait in the store's ``consent_reports`` table until the cloud acknowledges them (POST /v1/consent/reports,
signed with the participant key, idempotent by report id).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from federation.consent import REPORT_DOMAIN, ConsentError, pseudonym, verify_withdrawal
from federation.errors import ConfigError
from federation.runtime import atomic_write_text, sleep_or_stop
from federation.signing import sign
from gateway.store import ReadingStore

log = logging.getLogger(__name__)
DEFAULT_RETENTION_DAYS = 30.0  # storage limitation (GDPR Art. 5(1)(e)): readings are training data for a month
DEFAULT_RETENTION_INTERVAL_S = 3600.0
CONSENT_KEYS = "consent-keys.txt"


@dataclass(frozen=True)
class RetentionConfig:
    days: float = DEFAULT_RETENTION_DAYS
    interval_s: float = DEFAULT_RETENTION_INTERVAL_S

    def __post_init__(self) -> None:
        if not self.days > 0:
            raise ConfigError(f"retention days must be > 0, got {self.days}")
        if not self.interval_s > 0:
            raise ConfigError(f"retention interval must be > 0 seconds, got {self.interval_s}")


def parse_consent_keys(text: str, *, where: str) -> dict[str, str]:
    keys = {}
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) > 64 or len(parts[1]) != 44:
            raise ConfigError(f"{where}:{n}: expected '<device id> <base64 Ed25519 public key>'")
        keys[parts[0]] = parts[1]
    return keys


class ConsentKeys:
    """Devices' consent public keys from a file, re-read when it changes; an absent file knows no device."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._mtime: int | None = None
        self._keys: dict[str, str] = {}
        if path is None:
            log.warning("no consent keys: signed withdrawals cannot be verified and are refused (pass --consent-keys)")

    def get(self, device: str) -> str | None:
        if self.path is None:
            return None
        with self._lock:
            try:
                mtime = os.stat(self.path).st_mtime_ns
            except OSError:
                return None
            if mtime != self._mtime:
                self._keys = parse_consent_keys(self.path.read_text(), where=str(self.path))
                self._mtime = mtime
            return self._keys.get(device)


def forget_in_files(state_dir: Path, files: list[Path | None], device: str) -> int:
    """Remove `device`'s lines from the registry and key files that live in the state directory; files elsewhere are
    the operator's (a warning says so). Returns the number of files rewritten."""
    rewritten = 0
    for path in files:
        if path is None or not path.exists():
            continue
        try:
            inside = path.resolve().is_relative_to(state_dir.resolve())
        except OSError:
            inside = False
        if not inside:
            log.warning("consent: %s is outside the state directory; remove the withdrawn device from it by hand", path)
            continue
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if not (line.split() and line.split()[0] == device)]
        if len(kept) != len(lines):
            atomic_write_text(path, "".join(kept))
            rewritten += 1
    return rewritten


def handle_withdrawal(store: ReadingStore, gateway: str, device: str, payload: bytes, *, keys: ConsentKeys,
                      state_dir: Path, files: list[Path | None], now: float | None = None) -> str:
    """Verify and carry out one withdrawal: "withdrawn", "already withdrawn" or "refused: <reason>"; never raises on
    bad input."""
    name = pseudonym(store.secret, device)
    if store.is_withdrawn(device):
        log.info("consent: device %s already withdrawn; message ignored", name)
        return "already withdrawn"
    key = keys.get(device)
    try:
        if key is None:
            raise ConsentError("no consent key is provisioned for this device")
        w = verify_withdrawal(payload, public_key=key, gateway=gateway, device=device, now=now)
    except ConsentError as exc:
        store.count_refused_withdrawal()
        log.warning("consent: refused a withdrawal on %s's topic: %s", device, exc)
        return f"refused: {exc}"
    counts = store.withdraw(device, issued_at=w.issued_at, now=now)
    if counts is None:
        return "already withdrawn"
    forget_in_files(state_dir, files, device)
    log.warning("consent: device %s withdrew consent; deleted %d readings and %d quarantined messages", name,
                counts["readings"], counts["quarantined_messages"])
    return "withdrawn"


async def run_retention(store: ReadingStore, cfg: RetentionConfig, stop: asyncio.Event) -> None:
    """Enforce the retention period now and every `cfg.interval_s` until stopped."""
    while True:
        try:
            counts = await asyncio.to_thread(store.enforce_retention, cfg.days * 86400.0)
            if any(counts.values()):
                log.info("retention (%g days): deleted %d readings and %d quarantined messages", cfg.days,
                         counts["readings"], counts["quarantined_messages"])
        except Exception:  # the next run retries; the status shows the counters did not move
            log.exception("retention run failed")
        if await sleep_or_stop(stop, cfg.interval_s):
            return


def signed_report(key, participant: str, body: dict) -> dict:  # noqa: ANN001 - Ed25519 key
    doc = {"participant": participant, **body}
    return {**doc, "signature": sign(key, doc, domain=REPORT_DOMAIN)}


async def send_reports(store: ReadingStore, node, stop: asyncio.Event, *, interval_s: float = 1.0) -> None:  # noqa: ANN001
    """Post every pending report to the cloud (signed with the node's key) once the node is enrolled, until stopped."""
    from gateway.errors import CloudRejected

    while True:
        if node.enrolled:
            for body in await asyncio.to_thread(store.pending_reports):
                try:
                    await node.cloud.request("POST", "/v1/consent/reports",
                                             json=signed_report(node.key, node.cfg.participant_id, body))
                except CloudRejected as exc:
                    log.error("consent: the cloud refused report %s: %s (kept, retried)", body["report_id"], exc)
                    break
                except Exception as exc:  # unreachable: kept for the next attempt
                    log.warning("consent: report %s not delivered (%s); retrying", body["report_id"], exc)
                    break
                await asyncio.to_thread(store.report_sent, body["report_id"])
        if await sleep_or_stop(stop, interval_s):
            return
