"""Studies on Ray: a tiny sweep run as Ray tasks on a real local Ray gives the rows the in-process sweep gives for the
same seed (simulation mode), and `wearfed sweep --ray` refuses a cluster address where none runs, with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.executors import InProcess, RayExecutor
from sim.sweep import run_sweep
from tests.sim.test_sweep import BASE

ray = pytest.importorskip("ray", reason="the 'scale' extra (Ray) is not installed")
GRID = {"populations": (6,), "devices": (("per-reading", 2304.0),), "dp_grid": (4.0,)}  # DP-SGD: seeded noise


def _comparable(rows: list[dict]) -> list[dict]:
    """Federated rows as canonical JSON values (NaN scores, e.g. no alerts in a tiny group, compare equal as text)."""
    return sorted((json.loads(json.dumps(r, default=str)) for r in rows if r["kind"] == "federated"),
                  key=lambda r: (r["device_design"], str(r["device_epsilon_day"]), str(r["dp_epsilon"])))


def _text(row: dict) -> str:
    return json.dumps(row, sort_keys=True, default=str)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """torch at one thread while numpy's BLAS keeps its start-up count, as after `wearfed sweep` or a gateway command
    ran in this process (the case where one thread count for all libraries gave other weights in the workers)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_ray_sweep_equals_in_process_sweep(tmp_path: Path, one_torch_thread: None) -> None:
    here = run_sweep(BASE, tmp_path / "here", executor=InProcess(), **GRID)
    ex = RayExecutor("auto", local_cpus=2)
    try:
        assert ex.name.startswith("ray")
        there = run_sweep(BASE, tmp_path / "ray", executor=ex, **GRID)
        # the work really ran in Ray workers, not in this process
        pids = list(ex.map(_pid, [(i,) for i in range(2)]))
    finally:
        ex.close()
    import os

    assert os.getpid() not in pids
    a, b = _comparable(here), _comparable(there)
    assert len(a) == 1 and [r["dp_epsilon"] for r in a] == [r["dp_epsilon"] for r in b]
    for x, y in zip(a, b, strict=True):  # every score, privacy account and per-round curve identical (seeded)
        assert _text(x) == _text(y), sorted(k for k in x if _text({k: x[k]}) != _text({k: y.get(k)}))


def _pid(_i: int) -> int:
    import os

    return os.getpid()


def test_sweep_cli_names_an_unreachable_ray_address(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "federation.cli", "sweep", "--out", str(tmp_path / "o"),
                           "--source", "synthetic", "--populations", "4", "--ray", "127.0.0.1:1"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "--ray 127.0.0.1:1" in proc.stderr and "Traceback" not in proc.stderr
