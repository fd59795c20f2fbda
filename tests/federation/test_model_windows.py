"""Forecaster and windows: numpy and torch agree, weights round-trip, windows skip gaps and honour cutoffs."""

from __future__ import annotations

import numpy as np
import pytest

from federation import metrics, model
from federation.features import FEATURE_NAMES
from federation.series import PatientSeries
from federation.windows import make_windows, to_grid, windows_from_series


def inputs(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.empty((n, model.N_INPUTS))
    x[:, :model.HISTORY_STEPS] = rng.uniform(40, 400, size=(n, model.HISTORY_STEPS))
    x[:, model.HISTORY_STEPS:] = rng.normal(0, 1, size=(n, model.N_FEATURES)) * model.INPUT_SCALE[model.HISTORY_STEPS:]
    return x


def test_numpy_and_torch_forward_agree() -> None:
    torch = pytest.importorskip("torch")
    w = model.init_weights(seed=3)
    x = inputs(50)
    net = model.to_torch(w)
    with torch.no_grad():
        t_out = model.denormalise(net(torch.from_numpy(model.normalise_inputs(x))).numpy())
    np.testing.assert_allclose(model.predict(w, x), t_out, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(model.from_torch(net), w)


def test_weights_of_the_wrong_length_are_refused() -> None:
    with pytest.raises(ValueError, match="expected"):
        model.unflatten(np.zeros(model.N_PARAMS - 1, dtype=np.float32))


def test_model_is_small_enough_for_two_ciphertexts_and_a_device() -> None:
    assert model.N_PARAMS <= 4096 and model.N_PARAMS <= 50_000  # 2 CKKS ciphertexts of 2,048 slots (ckks.py)


def test_the_forecast_is_a_residual_over_the_last_reading() -> None:
    """Zero weights forecast persistence whatever the features say."""
    x = inputs(5)
    np.testing.assert_allclose(model.predict(np.zeros(model.N_PARAMS, dtype=np.float32), x),
                               np.repeat(x[:, model.LAST_GLUCOSE:model.LAST_GLUCOSE + 1], 2, axis=1), rtol=1e-5)


def test_inputs_of_the_old_width_are_refused() -> None:
    with pytest.raises(ValueError, match=f"\\(n, {model.N_INPUTS}\\)"):
        model.predict(model.init_weights(seed=0), np.full((3, model.HISTORY_STEPS), 120.0))


def test_grid_averages_bins_and_marks_gaps() -> None:
    origin, grid = to_grid(np.array([0, 60, 300, 900]), np.array([100.0, 110.0, 120.0, 130.0]))
    assert origin == 0
    np.testing.assert_array_equal(grid[:2], [105.0, 120.0])
    assert np.isnan(grid[2]) and grid[3] == 130.0


def test_windows_skip_gaps_and_respect_cutoff() -> None:
    grid = np.arange(100, dtype=float)
    x, y = make_windows(grid)
    span = model.HISTORY_STEPS + max(model.HORIZON_STEPS)
    assert len(x) == 100 - span + 1 and x.shape[1] == model.N_INPUTS
    np.testing.assert_array_equal(x[0, :model.HISTORY_STEPS], grid[:24])
    np.testing.assert_array_equal(y[0], [grid[23 + 6], grid[23 + 12]])
    grid[50] = np.nan
    x2, _ = make_windows(grid)
    assert len(x2) == len(x) - span
    x3, _ = make_windows(np.arange(100, dtype=float), origin=0, cutoff=(span - 1) * 300 + 300 * 4)
    assert len(x3) == 5


def test_windows_from_many_series_keep_their_patient() -> None:
    series = {"a": (np.arange(40) * 300, np.full(40, 100.0)), "b": (np.arange(10) * 300, np.full(10, 90.0)),
              "c": PatientSeries(times=np.arange(38) * 300 + 600, glucose=np.full(38, 80.0),
                                 carb_times=np.array([900]), carb_grams=np.array([30.0]))}
    w = windows_from_series(series)
    x, y = w  # unpacks as (x, y)
    assert x.shape == (5 + 3, model.N_INPUTS) and y.shape == (8, 2)
    assert w.patients == ("a", "b", "c") and w.patient.tolist() == [0] * 5 + [2] * 3 and w.n_patients == 2
    np.testing.assert_array_equal(w.t[:5], (np.arange(5) + 23) * 300)
    known = model.HISTORY_STEPS + FEATURE_NAMES.index("events_known")
    assert x[:5, known].tolist() == [0.0] * 5 and x[5:, known].tolist() == [1.0] * 3
    assert (x[5:, model.HISTORY_STEPS + FEATURE_NAMES.index("cob_g")] > 0).all()


def test_persistence_and_metrics() -> None:
    hist = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(metrics.persistence(hist, 2), [[3.0, 3.0]])
    assert metrics.rmse(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == 1.0
    assert metrics.mae(np.array([1.0, 4.0]), np.array([2.0, 2.0])) == 1.5
    assert metrics.mard(np.array([110.0]), np.array([100.0])) == pytest.approx(10.0)
