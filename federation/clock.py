"""Simulated clock shared by every process of a replay: sim time advances `accel` times faster than wall time."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

# 2026-01-01T00:00:00Z: the default start of simulated time.
DEFAULT_SIM_START = 1_767_225_600


@dataclass(frozen=True)
class SimClock:
    """Maps wall-clock seconds to simulated unix seconds: sim = sim_start + (wall - wall_start) * accel."""

    sim_start: float
    wall_start: float
    accel: float

    def __post_init__(self) -> None:
        if not self.accel > 0:
            raise ValueError(f"accel must be > 0, got {self.accel}")

    def now(self) -> float:
        return self.sim_start + (time.time() - self.wall_start) * self.accel

    def wall_at(self, sim_time: float) -> float:
        return self.wall_start + (sim_time - self.sim_start) / self.accel

    async def sleep_until(self, sim_time: float) -> None:
        delay = self.wall_at(sim_time) - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
