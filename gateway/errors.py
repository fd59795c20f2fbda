"""Errors of the gateway and hospital tier, each handled where it is raised or mapped to exit code 2 by the CLI.

    WearfedError (federation.errors)
    └── GatewayError
        ├── CloudRejected     the cloud answered 4xx (retrying will not help): status and reason
        └── RelayError        a model release could not be fetched, verified or republished (gateway.relay)
"""

from __future__ import annotations

from federation.errors import WearfedError


class GatewayError(WearfedError):
    """Base of the gateway tier's errors."""


class CloudRejected(GatewayError):
    """The cloud answered 4xx: retrying would not help. Carries the status and the cloud's reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason
