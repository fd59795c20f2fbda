"""An initial model trained on public data only: the 30 published UVA/Padova subjects (simglucose's parameter sets,
which describe no real patient), simulated with a seed of their own, without privacy.

DP-SGD from a publicly pretrained model is a standard way to spend less privacy on what public data already teaches
(e.g. De et al. 2022, arXiv:2204.13650; Tramèr & Boneh 2021, arXiv:2011.11660). Here the public subjects come from the
same simulator as the study's patients, which makes the public data more like the private data than a simulator's
output is like real patients: the gain a study measures with it is an upper bound for a real deployment.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from federation import model
from federation.clock import DEFAULT_SIM_START
from federation.windows import windows_from_series

PUBLIC_SUBJECTS = 30  # make_cohort puts the published subjects first
PUBLIC_SEED = 424_242  # their scenarios and sensor noise: no study draws its cohort from this seed


@lru_cache(maxsize=4)
def _pretrained(source: str, days: float, epochs: int, init_seed: int) -> np.ndarray:
    from sim.baselines import train_plain
    from sim.patients import training_patients

    public = training_patients(source, PUBLIC_SUBJECTS, days=days, seed=PUBLIC_SEED, start=DEFAULT_SIM_START)
    w = windows_from_series({p.name: p.series() for p in public})
    x, y = w.x.astype(np.float32), w.y.astype(np.float32)
    weights = model.init_weights(seed=init_seed)
    for epoch in range(epochs):
        weights = train_plain(weights, x, y, epochs=1, lr=0.05, seed=epoch, batch_size=256)
    return weights


def public_pretrained(source: str, *, days: float, epochs: int, init_seed: int) -> np.ndarray:
    """The initial weights after `epochs` passes of plain SGD over `days` of each published subject (a copy)."""
    if days <= 0 or epochs < 1:
        raise ValueError(f"public pretraining needs days > 0 and epochs >= 1, got {days} and {epochs}")
    return _pretrained(source, float(days), int(epochs), int(init_seed)).copy()
