"""The publicly pretrained initial model: built from the published subjects alone, deterministic, better than random
on patients it never saw, and what a study starts from when asked."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from federation import metrics, model
from sim.evaluate import heldout_set
from sim.public_model import public_pretrained
from sim.study import StudyConfig, initial_weights
from sim.sweep import markdown


def test_pretrained_on_public_subjects_beats_random_weights_on_unseen_patients() -> None:
    w = public_pretrained("uva-padova", days=1.0, epochs=2, init_seed=7)
    assert np.array_equal(w, public_pretrained("uva-padova", days=1.0, epochs=2, init_seed=7))  # simulation: replays
    test = heldout_set(source="uva-padova", patients=8, days=1.0, seed=7, sensor="dexcom-g7", fit_days=0.0)
    random = model.init_weights(seed=7)  # predicts the change from the last reading: about persistence
    scores = [metrics.rmse(model.predict(v, test.x)[:, 0], test.y_cgm[:, 0]) for v in (w, random)]
    assert scores[0] < 0.9 * scores[1], scores
    w[:] = 0.0  # a copy: the cached model is not the caller's to change
    assert not np.array_equal(w, public_pretrained("uva-padova", days=1.0, epochs=2, init_seed=7))


def test_a_study_starts_from_the_public_model_only_when_asked() -> None:
    cfg = StudyConfig(patients=30)
    assert np.array_equal(initial_weights(cfg), model.init_weights(seed=cfg.seed))
    pre = replace(cfg, public_pretrain_days=1.0, public_pretrain_epochs=2)
    assert np.array_equal(initial_weights(pre), public_pretrained("uva-padova", days=1.0, epochs=2, init_seed=7))
    # the public data do not depend on the study's cohort: another cohort size, the same starting model
    assert np.array_equal(initial_weights(replace(pre, patients=3000)), initial_weights(pre))
    assert "published subjects (public data)" in markdown([], pre) and "random initial model" in markdown([], cfg)
    with pytest.raises(ValueError, match="public pretraining"):
        public_pretrained("uva-padova", days=0.0, epochs=2, init_seed=7)
