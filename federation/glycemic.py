"""Hypoglycaemia detection scores of a forecast against a reference (glucose in mg/dL).

An event is a reference value below the threshold (70 mg/dL: level 1 hypoglycaemia in the International
Consensus on Use of CGM, T. Danne et al., Diabetes Care 40(12):1631-1640, 2017); the forecast detects it
when its value is below the same threshold. Sensitivity = TP / (TP + FN), specificity = TN / (TN + FP);
either is None, not NaN, when its denominator is zero (no events, or no non-events), so JSON stays valid.
RMSE, MAE and MARD live in `federation.metrics`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from federation.error_grids import HYPO_MGDL, paired_mgdl


@dataclass(frozen=True)
class HypoDetection:
    threshold: float
    true_positive: int
    false_negative: int
    true_negative: int
    false_positive: int

    @property
    def sensitivity(self) -> float | None:
        events = self.true_positive + self.false_negative
        return self.true_positive / events if events else None

    @property
    def specificity(self) -> float | None:
        normal = self.true_negative + self.false_positive
        return self.true_negative / normal if normal else None

    def as_dict(self) -> dict:
        return {**asdict(self), "sensitivity": self.sensitivity, "specificity": self.specificity}


def hypo_detection(reference: np.ndarray, prediction: np.ndarray, *, threshold: float = HYPO_MGDL) -> HypoDetection:
    """Confusion counts of `prediction < threshold` against `reference < threshold`."""
    if not (np.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a positive number of mg/dL, got {threshold}")
    ref, pred = paired_mgdl(reference, prediction)
    event, alarm = ref < threshold, pred < threshold
    return HypoDetection(
        threshold=float(threshold),
        true_positive=int(np.sum(event & alarm)),
        false_negative=int(np.sum(event & ~alarm)),
        true_negative=int(np.sum(~event & ~alarm)),
        false_positive=int(np.sum(~event & alarm)),
    )
