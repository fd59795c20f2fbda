"""Forecaster and windows: numpy and torch agree, weights round-trip, windows skip gaps and honour cutoffs."""

from __future__ import annotations

import numpy as np
import pytest

from federation import metrics, model
from federation.windows import make_windows, to_grid, windows_from_series


def test_numpy_and_torch_forward_agree() -> None:
    torch = pytest.importorskip("torch")
    w = model.init_weights(seed=3)
    x = np.random.default_rng(0).uniform(40, 400, size=(50, model.HISTORY_STEPS))
    net = model.to_torch(w)
    with torch.no_grad():
        t_out = model.denormalise(net(torch.from_numpy(model.normalise(x))).numpy())
    np.testing.assert_allclose(model.predict(w, x), t_out, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(model.from_torch(net), w)


def test_weights_of_the_wrong_length_are_refused() -> None:
    with pytest.raises(ValueError, match="expected"):
        model.unflatten(np.zeros(model.N_PARAMS - 1, dtype=np.float32))


def test_model_is_small_enough_for_one_ciphertext_and_a_device() -> None:
    assert model.N_PARAMS <= 4096 and model.N_PARAMS <= 50_000


def test_grid_averages_bins_and_marks_gaps() -> None:
    origin, grid = to_grid(np.array([0, 60, 300, 900]), np.array([100.0, 110.0, 120.0, 130.0]))
    assert origin == 0
    np.testing.assert_array_equal(grid[:2], [105.0, 120.0])
    assert np.isnan(grid[2]) and grid[3] == 130.0


def test_windows_skip_gaps_and_respect_cutoff() -> None:
    grid = np.arange(100, dtype=float)
    x, y = make_windows(grid)
    span = model.HISTORY_STEPS + max(model.HORIZON_STEPS)
    assert len(x) == 100 - span + 1
    np.testing.assert_array_equal(y[0], [grid[23 + 6], grid[23 + 12]])
    grid[50] = np.nan
    x2, _ = make_windows(grid)
    assert len(x2) == len(x) - span
    x3, _ = make_windows(np.arange(100, dtype=float), origin=0, cutoff=(span - 1) * 300 + 300 * 4)
    assert len(x3) == 5


def test_windows_from_many_series() -> None:
    series = [(np.arange(40) * 300, np.full(40, 100.0)), (np.arange(10) * 300, np.full(10, 90.0))]
    x, y = windows_from_series(series)
    assert x.shape == (40 - 36 + 1, 24) and y.shape == (5, 2)


def test_persistence_and_metrics() -> None:
    hist = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(metrics.persistence(hist, 2), [[3.0, 3.0]])
    assert metrics.rmse(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == 1.0
    assert metrics.mae(np.array([1.0, 4.0]), np.array([2.0, 2.0])) == 1.5
    assert metrics.mard(np.array([110.0]), np.array([100.0])) == pytest.approx(10.0)
