"""`federation.windows.resample`: off-grid readings onto the 5-min grid with a 450 s span tolerance (issue 16)."""

from __future__ import annotations

import numpy as np

from federation.windows import RESAMPLE_MAX_SPAN_S, resample, to_grid, windows_from_series

T0 = 1_767_225_600


def test_on_grid_and_dense_readings_are_unchanged_from_binning() -> None:
    g = 100 + 30 * np.sin(np.arange(400) / 15)
    for times in (T0 + 300 * np.arange(400), T0 + 60 * np.arange(400)):  # 5-min and 1-min sensors
        origin, grid = to_grid(times, g)
        r = resample(times, g)
        assert r.origin == origin and np.array_equal(r.grid, grid, equal_nan=True)


def test_jittered_readings_are_interpolated_and_a_missing_one_stays_a_gap() -> None:
    rng = np.random.default_rng(4)
    times = T0 + 300 * np.arange(200) + rng.integers(-25, 26, 200)
    g = 90 + (times - T0) / 300  # linear in time: interpolation is exact
    keep = np.ones(200, dtype=bool)
    keep[100] = False  # one lost reading: neighbours 600 s apart
    r = resample(times[keep], g[keep])
    grid_t = r.origin + 300 * np.arange(r.grid.size)
    filled = ~np.isnan(r.grid)
    np.testing.assert_allclose(r.grid[filled], 90 + (grid_t[filled] - T0) / 300, atol=1e-9)
    assert r.gaps >= 1 and r.method == "interpolated"
    empty = grid_t[~filled]
    # by the lost one: its neighbours span 600 s +- 50 of jitter, which holds up to three grid points
    assert 1 <= len(empty) <= 3 and all(abs(t - (T0 + 300 * 100)) <= 300 for t in empty)
    assert len(windows_from_series({"p": (times, g)}, resampled=True)) > 150
    assert len(windows_from_series({"p": (times, g)})) < 150  # floor-binning loses windows to collisions


def test_span_tolerance_is_the_documented_one() -> None:
    times = np.array([T0 - 200, T0 + 249])  # 449 s apart around T0
    assert not np.isnan(resample(times, np.array([100.0, 110.0])).grid[0])
    times = np.array([T0 - 200, T0 + 251])  # 451 s
    assert RESAMPLE_MAX_SPAN_S == 450 and np.isnan(resample(times, np.array([100.0, 110.0])).grid[0])
