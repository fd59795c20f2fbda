"""Randomness that protects privacy (LDP noise, DP-SGD noise, sampling, masks): from the OS CSPRNG, or, only in the
named simulation mode, from a seed.

`PrivacyRNG.secure()` turns `os.urandom` bytes (the kernel CSPRNG, getrandom(2)) into numbers with numpy: uniform
doubles from the top 53 bits of each 64-bit word (every representable multiple of 2**-53 in [0, 1) equally likely),
normals by Box-Muller (Box and Muller 1958), Laplace by inverse CDF. Nobody who knows a device id, a round id or a
seed can regenerate what it draws.

`PrivacyRNG.simulation(seed)` is numpy's PCG64 under a seed: reproducible replays, studies and tests, and NOT private.
It exists only under that name; every place that runs it says `SIMULATION_LABEL` (logs, status, summaries), as the
insecure dev custodian is labelled. Daemons refuse a seed unless simulation mode is asked for by name.

Both expose the same small API, so mechanisms take a `PrivacyRNG` and never know which one they got.
"""

from __future__ import annotations

import math
import os

import numpy as np

SECURE = "secure"
SIMULATION = "simulation"
MODES = (SECURE, SIMULATION)
SIMULATION_LABEL = "SIMULATION MODE: privacy noise is seeded and reproducible (not private)"
_TWO_POW_53 = float(2 ** 53)


class PrivacyRNG:
    """Uniform, normal, Laplace and Bernoulli draws for privacy mechanisms; `mode` says where they come from."""

    def __init__(self, *, mode: str, generator: np.random.Generator | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"privacy randomness mode must be one of {MODES}, got {mode!r}")
        if (mode == SIMULATION) != (generator is not None):
            raise ValueError("a seeded generator is allowed in simulation mode only, and needed there")
        self.mode = mode
        self._gen = generator

    @classmethod
    def secure(cls) -> PrivacyRNG:
        return cls(mode=SECURE)

    @classmethod
    def simulation(cls, seed: int | np.random.SeedSequence) -> PrivacyRNG:
        """Seeded and reproducible: replays, studies and tests only (label everything with SIMULATION_LABEL)."""
        return cls(mode=SIMULATION, generator=np.random.Generator(np.random.PCG64(seed)))

    @property
    def is_secure(self) -> bool:
        return self.mode == SECURE

    @property
    def label(self) -> str | None:
        """What to print beside anything this randomness touched (None when it is secure)."""
        return None if self.is_secure else SIMULATION_LABEL

    def spawn(self, key: int) -> PrivacyRNG:
        """An independent stream (a device of a fleet, a round of a node): fresh OS entropy, or a derived seed."""
        if self.is_secure:
            return self
        return PrivacyRNG.simulation(np.random.SeedSequence([int(self._gen.integers(0, 2 ** 63)), key]))

    def uniform(self, size: int | tuple[int, ...]) -> np.ndarray:
        """Doubles uniform on [0, 1), in multiples of 2**-53."""
        n = int(np.prod(size))
        if self._gen is not None:
            return self._gen.random(n).reshape(size)
        words = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
        return ((words >> np.uint64(11)).astype(np.float64) / _TWO_POW_53).reshape(size)

    def open_uniform(self, size: int | tuple[int, ...]) -> np.ndarray:
        """Uniform on (0, 1): 0 is replaced by 2**-54 (half a step), so logarithms stay finite."""
        u = self.uniform(size)
        return np.where(u == 0.0, 2.0 ** -54, u)

    def standard_normal(self, size: int | tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(size))
        if self._gen is not None:
            return self._gen.standard_normal(n).reshape(size)
        half = (n + 1) // 2
        u1, u2 = self.open_uniform(half), self.uniform(half)
        r = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate([r * np.cos(2 * math.pi * u2), r * np.sin(2 * math.pi * u2)])
        return z[:n].reshape(size)

    def normal(self, *, scale: float, size: int | tuple[int, ...]) -> np.ndarray:
        return scale * self.standard_normal(size)

    def laplace(self, *, scale: float, size: int | tuple[int, ...]) -> np.ndarray:
        """Laplace(0, scale) by inverse CDF: -scale * sign(u) * log(1 - 2|u|), u uniform on (-1/2, 1/2)."""
        u = self.open_uniform(size) - 0.5
        return -scale * np.sign(u) * np.log1p(-2.0 * np.abs(u))

    def bernoulli(self, p: float | np.ndarray, size: int | tuple[int, ...]) -> np.ndarray:
        """True with probability p (each independently)."""
        return self.uniform(size) < p

    def integers(self, high: int, size: int | tuple[int, ...]) -> np.ndarray:
        """Integers uniform on [0, high): floor of a 53-bit uniform times high (bias < high / 2**53)."""
        if not 0 < high < 2 ** 40:
            raise ValueError(f"high must be in (0, 2**40), got {high}")
        return np.floor(self.uniform(size) * high).astype(np.int64)

    def token_bytes(self, n: int) -> bytes:
        """Key material and seeds: always the OS CSPRNG outside simulation mode."""
        if self._gen is not None:
            return self._gen.bytes(n)
        return os.urandom(n)
