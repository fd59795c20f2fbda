"""`wearfed cohort generate` writes a readable cohort; bad arguments get a clear error, not a traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from federation.cli import main

pytest.importorskip("pyarrow")


def test_generate_writes_parquet_traces_with_metadata(tmp_path: Path) -> None:
    from sim.cohort import read_cohort

    out = tmp_path / "cohort"
    assert main(["cohort", "generate", "--patients", "4", "--days", "0.5", "--seed", "5", "--out", str(out)]) == 0
    traces = read_cohort(out)
    assert len(traces) == 4 and traces.cgm.shape == (4, 144)
    assert traces.subjects[:3] == ("child#001", "adolescent#001", "adult#001")
    assert np.nanmin(traces.cgm) >= 40 and np.nanmax(traces.cgm) <= 400
    assert traces.metadata["seed"] == 5


def test_bad_patient_count_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cohort", "generate", "--patients", "0", "--days", "1", "--out", str(tmp_path / "x")]) == 2
    assert "patients" in capsys.readouterr().err
