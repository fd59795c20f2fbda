"""The privacy ledger's checks: recompute a participant's epsilon from its declared DP-SGD history.

Epsilon is a pure function of the (noise multiplier, sample rate, steps) history
(`federation.dp_accounting.epsilon`, Opacus' PRV or RDP accountant), so the cloud recomputes it instead of
trusting the declared number. Unit: as the report declares it (`DPReport.unit`: "patient" for user-level DP-SGD,
"window" where a node chose record-level); delta as declared (at most 1e-5, DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cloud.errors import CloudError
from federation import dp_accounting, limits
from federation.wire import DPReport

RELATIVE_TOLERANCE = 1e-6  # the node runs the same accountant code: any larger gap is understatement
ABSOLUTE_TOLERANCE = 1e-9
MAX_DELTA = limits.MAX_DELTA

Step = tuple[float, float, int]


class PrivacyViolation(CloudError):
    """The declared DP report is inconsistent, understated, or passes the cap; `status` is the HTTP status."""

    def __init__(self, reason: str, *, status: int) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Spend:
    history: list[Step]
    epsilon_cumulative: float
    epsilon_round: float


def _steps(history: Sequence[Sequence[float]]) -> list[Step]:
    return [(float(s), float(q), int(n)) for s, q, n in history]


def _understated(declared: float, recomputed: float) -> bool:
    return declared < recomputed - (ABSOLUTE_TOLERANCE + RELATIVE_TOLERANCE * recomputed)


def check_report(dp: DPReport, *, previous: Sequence[Sequence[float]], cap: float | None) -> Spend:
    """Check one update's DP report against the participant's previously accepted history and its cap."""
    history = _steps(dp.history)
    step = (float(dp.noise_multiplier), float(dp.sample_rate), int(dp.steps))
    if not history or history[-1] != step:
        raise PrivacyViolation(f"history must end with this round's step {list(step)}", status=400)
    if dp.delta > MAX_DELTA:
        raise PrivacyViolation(f"delta {dp.delta} exceeds the federation's {MAX_DELTA}", status=400)
    prev = _steps(previous)
    if len(history) <= len(prev) or history[: len(prev)] != prev:  # this round's step comes after them all
        raise PrivacyViolation(f"declared history ({len(history)} entries) does not extend the {len(prev)} "
                               "entries already accepted from this participant: rounds were dropped", status=409)
    try:
        cumulative = dp_accounting.epsilon(history, delta=dp.delta, accountant=dp.accountant)
        this_round = dp_accounting.epsilon([step], delta=dp.delta, accountant=dp.accountant)
    except (ValueError, ArithmeticError) as exc:
        raise PrivacyViolation(f"history cannot be accounted: {exc}", status=400) from exc
    if _understated(dp.epsilon_cumulative, cumulative):
        raise PrivacyViolation(f"declared cumulative epsilon {dp.epsilon_cumulative:.6g} understates the "
                               f"recomputed {cumulative:.6g} (delta {dp.delta}, per {dp.unit}, {dp.accountant})",
                               status=400)
    if _understated(dp.epsilon_round, this_round):
        raise PrivacyViolation(f"declared round epsilon {dp.epsilon_round:.6g} understates the recomputed "
                               f"{this_round:.6g} (delta {dp.delta}, per {dp.unit}, {dp.accountant})", status=400)
    if cap is not None and cumulative > cap:
        raise PrivacyViolation(f"privacy cap: cumulative epsilon {cumulative:.6g} (delta {dp.delta}, per {dp.unit}, "
                               f"{dp.accountant}) would pass the cap {cap}", status=403)
    return Spend(history=history, epsilon_cumulative=cumulative, epsilon_round=this_round)
