"""Devices replay traces from a file: gaps are skipped, unknown devices and malformed files are clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device.errors import DeviceError
from device.traces import load_trace, write_traces


def test_round_trip_drops_gaps_and_clips_to_days(tmp_path: Path) -> None:
    path = tmp_path / "t.npz"
    offsets = np.arange(0, 2 * 86400, 300)
    cgm = np.vstack([np.linspace(80, 200, len(offsets)), np.full(len(offsets), 100.0)])
    cgm[0, 3] = np.nan
    write_traces(path, ["a", "b"], offsets, cgm)
    times, values = load_trace(path, "a", start=1000, days=1.0)
    assert len(times) == 288 - 1 and times[0] == 1000 and 1000 + 3 * 300 not in times
    np.testing.assert_allclose(values[:3], cgm[0, :3], rtol=1e-6)
    with pytest.raises(DeviceError, match="no trace for c"):
        load_trace(path, "c", start=0, days=1)


def test_malformed_trace_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, device_ids=np.array(["a"]), offsets_s=np.arange(3), cgm=np.zeros((2, 3)))
    with pytest.raises(DeviceError, match="shape"):
        load_trace(bad, "a", start=0, days=1)
    with pytest.raises(DeviceError):
        load_trace(tmp_path / "missing.npz", "a", start=0, days=1)


def test_a_rewritten_trace_file_is_read_afresh(tmp_path: Path) -> None:
    """The reader caches parsed files; a file written again (a re-import with --force) must not be served stale."""
    path = tmp_path / "t.npz"
    write_traces(path, ["d1"], np.array([0, 300]), np.array([[100.0, 110.0]]))
    assert load_trace(path, "d1", start=0, days=1)[1].tolist() == [100.0, 110.0]
    write_traces(path, ["d1"], np.array([0, 300, 600]), np.array([[90.0, 95.0, 99.0]]))
    assert load_trace(path, "d1", start=0, days=1)[1].tolist() == [90.0, 95.0, 99.0]
    path.unlink()
    with pytest.raises(DeviceError, match="t.npz"):
        load_trace(path, "d1", start=0, days=1)
