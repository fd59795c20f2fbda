"""Plausibility of a declared DP-SGD step against the round it answers (issue 13, "plausible DP reports").

`cloud.privacy` recomputes epsilon from the declared (noise multiplier, sample rate q, steps) history, so a report
cannot understate its arithmetic. It can still lie about what was run: (noise 1000, 1 step) books epsilon ~0 and
trains nothing; (noise 0.3, q 1e-9) books epsilon ~0 for a sampling rate no honest node uses. Honest nodes plan
their step with `gateway.trainer.plan_steps`: q = min(1, B / n) for n units (patients, or windows where a node chose
record-level DP) and expected batch B, and steps = max(1, round(epochs / q)) for the round's `local_epochs`. So:

- ``dp_noise_floor`` / ``dp_noise_ceiling``: the noise multiplier is within the federation's policy band. The floor
  keeps each step's Gaussian mechanism meaningful on its own; the ceiling refuses steps whose noise swamps the
  clipped signal (at sigma 1000 the update is noise, Abadi et al. CCS 2016 train with sigma 0.5 to 8).
- ``dp_expected_batch``: q x n_samples, the expected units per step, is at least the floor (one unit: below it most
  steps see nobody, as q 1e-9 does) and at most the ceiling.
- ``dp_steps``: steps equal max(1, round(epochs / q)) within the tolerance (an honest node's float rounding).
- ``dp_n_samples``: n_samples within the bounds for its unit.

Each refusal names its check, and is raised as a `PrivacyViolation` (400), audited by `cloud.submissions` like the
other report checks. Units: n_samples and the expected batch are in the report's `unit` (patients or windows).
"""

from __future__ import annotations

from dataclasses import dataclass

from cloud.privacy import PrivacyViolation
from federation.wire import DPReport


@dataclass(frozen=True)
class DPPolicy:
    noise_floor: float = 0.5
    noise_ceiling: float = 20.0
    min_expected_batch: float = 1.0  # units per step (q x n_samples)
    max_expected_batch: float = 100_000.0
    max_patients: int = 1_000_000  # n_samples bound for unit "patient"
    max_windows: int = 100_000_000  # n_samples bound for unit "window"
    steps_tolerance: float = 0.01  # relative, on top of one step of rounding

    def __post_init__(self) -> None:
        if not 0 < self.noise_floor <= self.noise_ceiling:
            raise ValueError(f"need 0 < noise_floor <= noise_ceiling, got {self.noise_floor}, {self.noise_ceiling}")
        if not 0 < self.min_expected_batch <= self.max_expected_batch:
            raise ValueError("need 0 < min_expected_batch <= max_expected_batch")
        if self.max_patients < 1 or self.max_windows < 1 or self.steps_tolerance < 0:
            raise ValueError("max_patients and max_windows must be >= 1, steps_tolerance >= 0")


class ImplausibleReport(PrivacyViolation):
    """A DP report that does not fit the round; `check` names the failed check."""

    def __init__(self, check: str, reason: str) -> None:
        super().__init__(f"implausible DP report ({check}): {reason}", status=400)
        self.check = check


def expected_steps(*, sample_rate: float, epochs: int) -> int:
    """What `gateway.trainer.plan_steps` gives for this q and epochs."""
    return max(1, int(round(epochs / sample_rate)))


def check_plausible(dp: DPReport, *, n_samples: int, epochs: int, policy: DPPolicy) -> None:
    """Raise `ImplausibleReport` naming the first check the declared step fails; None when it fits the round."""
    sigma, q, steps = float(dp.noise_multiplier), float(dp.sample_rate), int(dp.steps)
    if sigma < policy.noise_floor:
        raise ImplausibleReport("dp_noise_floor", f"noise multiplier {sigma:g} is below the federation's floor "
                                                  f"{policy.noise_floor:g}")
    if sigma > policy.noise_ceiling:
        raise ImplausibleReport("dp_noise_ceiling", f"noise multiplier {sigma:g} is above the ceiling "
                                                    f"{policy.noise_ceiling:g}: such an update is noise")
    bound = policy.max_patients if dp.unit == "patient" else policy.max_windows
    if n_samples > bound:
        raise ImplausibleReport("dp_n_samples", f"n_samples {n_samples} {dp.unit}s exceeds the bound {bound}")
    batch = q * n_samples
    if batch < policy.min_expected_batch * (1 - 1e-9):
        raise ImplausibleReport("dp_expected_batch", f"sample rate {q:g} x n_samples {n_samples} = {batch:.3g} "
                                f"expected {dp.unit}s per step, below {policy.min_expected_batch:g}")
    if batch > policy.max_expected_batch:
        raise ImplausibleReport("dp_expected_batch", f"sample rate {q:g} x n_samples {n_samples} = {batch:.3g} "
                                f"expected {dp.unit}s per step, above {policy.max_expected_batch:g}")
    want = expected_steps(sample_rate=q, epochs=epochs)
    if abs(steps - want) > 1 + policy.steps_tolerance * want:
        raise ImplausibleReport("dp_steps", f"{steps} steps at sample rate {q:g}, but the round's {epochs} local "
                                f"epoch(s) take {want} (epochs / q)")
