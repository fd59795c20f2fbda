"""A node's durable state: DP-SGD history (the accountant's input), rounds answered, and the outbox.

Written atomically (`federation.runtime.atomic_write_json`) so a kill at any point leaves the old or the new state.
The outbox holds a signed submission until the cloud has acknowledged it, so a crash never retrains
(and never spends privacy twice) for a round already trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from federation.runtime import atomic_write_json
from gateway.errors import GatewayError


@dataclass
class NodeState:
    history: list[list[float]] = field(default_factory=list)  # [noise_multiplier, sample_rate, steps]
    answered: dict[str, str] = field(default_factory=dict)  # round id -> "submitted" | "refused: ..."
    outbox: dict[str, dict] = field(default_factory=dict)  # round id -> submission body not yet acknowledged

    @classmethod
    def load(cls, path: Path) -> NodeState:
        if not path.exists():
            return cls()
        try:
            doc = json.loads(path.read_text())
            return cls(history=doc["history"], answered=doc["answered"], outbox=doc["outbox"])
        except (ValueError, KeyError) as exc:
            raise GatewayError(f"node state {path} is corrupt ({exc}); refusing to start with a blank budget") from exc

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"history": self.history, "answered": self.answered, "outbox": self.outbox})

    def steps(self) -> list[tuple[float, float, int]]:
        return [(float(s), float(q), int(n)) for s, q, n in self.history]
