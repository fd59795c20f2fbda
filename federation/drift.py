"""Telemetry drift: fixed glucose histograms of (already privatised) readings and their KL divergence.

Bins: 18 bins of 20 mg/dL over the device clip range 40-400 mg/dL (`BIN_EDGES`); a locally privatised value
may fall outside that range (the LDP estimate is unbiased, not bounded) and is counted in the first or last
bin. Only counts travel. KL divergence (Kullback and Leibler 1951) D(P || Q) = sum_i p_i ln(p_i / q_i), in
nats, with P the recent telemetry and Q the training reference, both smoothed by adding `ALPHA` = 0.5 to every
bin first (the Krichevsky-Trofimov estimator, R. Krichevsky and V. Trofimov, IEEE Trans. Inf. Theory
27(2):199-207, 1981), so an empty bin never makes the divergence infinite.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from federation.errors import SchemaError
from federation.wire import PARTICIPANT_ID

DRIFT_DOMAIN = b"wearfed/drift/v1\n"
LO_MGDL, HI_MGDL = 40.0, 400.0  # the device clip range (firmware profiles clip readings here before LDP)
N_BINS = 18
BIN_EDGES = np.linspace(LO_MGDL, HI_MGDL, N_BINS + 1)
ALPHA = 0.5


def histogram(values: np.ndarray | Sequence[float]) -> list[int]:
    """Counts per fixed bin; values outside 40-400 mg/dL land in the edge bins; non-finite values are dropped."""
    v = np.asarray(values, dtype=np.float64)
    v = np.clip(v[np.isfinite(v)], LO_MGDL, HI_MGDL)
    counts, _ = np.histogram(v, bins=BIN_EDGES)
    return [int(c) for c in counts]


def check_counts(counts: Sequence[int]) -> np.ndarray:
    c = np.asarray(counts)
    if c.shape != (N_BINS,):
        raise SchemaError(f"a drift histogram has {N_BINS} bins, got {c.shape}")
    if not np.issubdtype(c.dtype, np.integer) or (c < 0).any():
        raise SchemaError("drift histogram counts must be non-negative integers")
    return c.astype(np.float64)


def kl_divergence(recent: Sequence[int], reference: Sequence[int], *, alpha: float = ALPHA) -> float:
    """D(recent || reference) in nats, after adding `alpha` to every bin of both histograms."""
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    p = check_counts(recent) + alpha
    q = check_counts(reference) + alpha
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / q)))


class DriftReport(BaseModel):
    """A gateway's histogram of readings whose reading time is in [t_start, t_end], signed by the gateway."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    participant: str = Field(pattern=PARTICIPANT_ID)
    t_start: float = Field(ge=0)
    t_end: float = Field(ge=0)
    counts: list[int] = Field(min_length=N_BINS, max_length=N_BINS)
    report_id: str = Field(min_length=8, max_length=64, description="unique per report: a resend is recognised")
    signature: str = Field(max_length=200)

    def signed_doc(self) -> dict:
        return self.model_dump(mode="json", exclude={"signature"})
