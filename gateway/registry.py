"""The gateway's device registry: the device ids provisioned to it, read from a file and re-read when it changes.

File format: one device id per line; blank lines and lines starting with "#" are ignored. A gateway with no
registry accepts any device id the broker lets publish under its topic (the broker ACL is then the only check)
and says so in its log at start; production gateways are started with `--devices-file`.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Protocol

from federation.errors import ConfigError

log = logging.getLogger(__name__)


def parse_devices(text: str) -> frozenset[str]:
    ids = set()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            if len(line) > 64 or any(c in line for c in "/+#"):
                raise ConfigError(f"device id {line!r} is not a valid topic level (max 64 chars, no / + #)")
            ids.add(line)
    return frozenset(ids)


class Revoked(Protocol):
    def reason(self, device: str) -> str | None: ...


class DeviceRegistry:
    """Known device ids; `None` path means an open registry (any id is known). `revoked` (`gateway.acl_watch`) names
    devices whose readings are refused even though they are known."""

    def __init__(self, path: Path | None, *, revoked: Revoked | None = None) -> None:
        self.path = path
        self.revoked = revoked
        self._lock = threading.Lock()
        self._mtime: int | None = None
        self._ids: frozenset[str] = frozenset()
        if path is not None:
            self._reload(force=True)
        else:
            log.warning("no device registry configured: accepting every device the broker admits to this gateway's "
                        "topic (pass --devices-file to quarantine unknown devices)")

    @property
    def open(self) -> bool:
        return self.path is None

    def _reload(self, *, force: bool = False) -> None:
        assert self.path is not None
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except OSError as exc:
            if force:
                raise ConfigError(f"device registry {self.path} is unreadable: {exc}") from exc
            log.error("device registry %s unreadable (%s); keeping the last %d ids", self.path, exc, len(self._ids))
            return
        if force or mtime != self._mtime:
            ids = parse_devices(self.path.read_text())
            self._ids, self._mtime = ids, mtime
            log.info("device registry %s: %d devices", self.path, len(ids))

    def __contains__(self, device: str) -> bool:
        if self.path is None:
            return True
        with self._lock:
            try:
                self._reload()
            except ConfigError as exc:
                log.error("device registry %s has a bad line (%s); keeping the last %d ids", self.path, exc,
                          len(self._ids))
            return device in self._ids

    def refusal(self, device: str) -> str | None:
        """Why readings of `device` are refused (revoked, or unknown), None if they are accepted."""
        if self.revoked is not None and (why := self.revoked.reason(device)) is not None:
            return why
        return None if device in self else f"unknown device {device!r} (not in the gateway's device registry)"

    def __len__(self) -> int:
        return len(self._ids)
