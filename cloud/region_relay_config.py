"""A region relay's configuration (`RelayConfig`, checked at construction) and its refusal (`Refused`: an HTTP
status and a reason, for a participant's submission or for the cloud's answer to the relay)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from federation.errors import ConfigError, WearfedError
from federation.limits import PARTICIPANT_ID


class Refused(WearfedError):
    """A submission (or the cloud, answering the relay) refused, with an HTTP status and a reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{reason} (HTTP {status})")
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class RelayConfig:
    region_id: str
    cloud_url: str
    state_dir: Path
    enroll_token: str | None = None  # needed once, for the first start
    members: frozenset[str] | None = None  # None: any enrolled participant that addresses this region
    flush_after_s: float = 2.0
    expected_key_id: str | None = None  # the federation's CKKS key id from provisioning, if given
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        if not re.match(PARTICIPANT_ID, self.region_id):
            raise ConfigError(f"region id {self.region_id!r} must match {PARTICIPANT_ID}")
        bad = sorted(m for m in self.members or () if not re.match(PARTICIPANT_ID, m))
        if bad:
            raise ConfigError(f"member ids {bad} must match {PARTICIPANT_ID}")
        if not self.flush_after_s > 0:
            raise ConfigError(f"flush_after_s must be positive, got {self.flush_after_s}")
        if not self.cloud_url.startswith(("http://", "https://")):
            raise ConfigError(f"cloud URL {self.cloud_url!r} must start with http:// or https://")
