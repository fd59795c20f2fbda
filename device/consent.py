"""`wearfed device withdraw`: the patient withdraws consent on the device.

In this order, so that a crash at any point leaves the device silent: (1) a marker file
``<state-dir>/consent/<device>-<crc>.json`` is written atomically; a running or restarted device checks it before
every release and every publish and stops (`withdrawn`); (2) the device's unsent releases are deleted from its
store-and-forward spool; (3) the withdrawal record, signed with the device's consent key (`federation.consent`), is
published on its consent topic (QoS 1, acknowledged by the broker) for the gateway to purge what it holds. Step 3
can be repeated (``--resend``) until the gateway has it: a second record of the same device changes nothing there.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from device.errors import DeviceError
from device.mqtt_lite import LiteClient, MqttError
from federation.consent import consent_key, new_withdrawal
from federation.runtime import atomic_write_json
from federation.telemetry import consent_topic

if TYPE_CHECKING:
    from device.publisher import Broker

log = logging.getLogger(__name__)


def marker_path(state_dir: Path, device_id: str) -> Path:
    return Path(state_dir) / "consent" / f"{device_id}-{zlib.crc32(device_id.encode()):08x}.json"


def is_withdrawn(state_dir: Path, device_id: str) -> bool:
    return marker_path(state_dir, device_id).exists()


def mark_withdrawn(state_dir: Path, device_id: str, *, now: float | None = None) -> None:
    path = marker_path(state_dir, device_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"withdrawn_at": time.time() if now is None else now})


def drop_spooled(state_dir: Path, device_id: str) -> int:
    """Delete the device's unsent releases from its spool (secure_delete: the freed cells are zeroed)."""
    path = Path(state_dir) / "spool.sqlite"
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(path, timeout=10)
        try:
            db.execute("PRAGMA secure_delete=ON")
            with db:
                n = db.execute("DELETE FROM queue WHERE device=?", (device_id,)).rowcount
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return n
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise DeviceError(f"cannot delete {device_id}'s spooled releases from {path}: {exc}") from exc


async def publish_withdrawal(broker: Broker, *, gateway: str, device_id: str, seed_b64: str,
                             username: str | None, password: str | None, timeout_s: float = 10.0) -> None:
    """Publish the signed withdrawal (QoS 1); returns once the broker has acknowledged it."""
    payload = new_withdrawal(consent_key(seed_b64), gateway=gateway, device=device_id)
    try:
        async with LiteClient(broker.host, broker.port, client_id=device_id, username=username or broker.username,
                              password=password or broker.password, clean_session=False, tls=broker.tls_context(),
                              timeout=timeout_s) as client:
            await client.publish(consent_topic(gateway, device_id), payload, qos=1)
    except (MqttError, OSError) as exc:
        raise DeviceError(f"{device_id}: the withdrawal was recorded on the device but not delivered to the broker "
                          f"({exc}); run `wearfed device withdraw --resend` again when it is reachable") from exc


def withdrawal_status(state_dir: Path, device_id: str) -> dict:
    path = marker_path(state_dir, device_id)
    return json.loads(path.read_text()) if path.exists() else {}
