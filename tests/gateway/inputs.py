"""Model inputs for trainer tests: glucose histories (mg/dL) with plausible feature columns appended."""

from __future__ import annotations

import numpy as np

from federation import model


def with_features(history: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """(n, 24) glucose -> (n, N_INPUTS): features drawn at their typical scale (zeros is too easy a test)."""
    rng = rng or np.random.default_rng(0)
    history = np.asarray(history, dtype=np.float64)
    feats = rng.normal(0, 1, size=(len(history), model.N_FEATURES)) * model.INPUT_SCALE[model.HISTORY_STEPS:]
    return np.hstack([history, feats])


def sim(seed: int = 0):  # noqa: ANN201
    """A seeded privacy RNG (simulation mode: reproducible tests, not private)."""
    from federation.privacy_rng import PrivacyRNG

    return PrivacyRNG.simulation(seed)
