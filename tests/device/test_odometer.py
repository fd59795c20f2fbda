"""Tests for device.odometer: persistence, daily cap, day rollover, corrupt state, crash safety."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from device.odometer import (
    BudgetExhausted,
    OdometerStateError,
    PrivacyOdometer,
    utc_day,
)

REPO = Path(__file__).resolve().parents[2]
DAY1, DAY2 = "2026-01-01", "2026-01-02"


def make(path: Path, cap: float = 1.0, eps: float = 0.25, mech: str = "hybrid") -> PrivacyOdometer:
    return PrivacyOdometer(path, daily_cap=cap, mechanism=mech, epsilon_per_reading=eps)


def test_persists_across_reinstantiation(tmp_path: Path) -> None:
    path = tmp_path / "odo.json"
    odo = make(path)
    odo.spend(DAY1)
    odo.spend(DAY1, n=2)
    odo.spend(DAY2)
    again = make(path)
    assert again.spent_today(DAY1) == pytest.approx(0.75)
    assert again.spent_today(DAY2) == pytest.approx(0.25)
    assert again.lifetime == pytest.approx(1.0)
    assert again.report() == odo.report()


def test_daily_cap_enforced(tmp_path: Path) -> None:
    odo = make(tmp_path / "odo.json", cap=1.0, eps=0.25)
    for _ in range(4):
        assert odo.can_spend(DAY1)
        odo.spend(DAY1)
    assert not odo.can_spend(DAY1)
    with pytest.raises(BudgetExhausted) as info:
        odo.spend(DAY1)
    assert (info.value.day, info.value.spent, info.value.cap) == (DAY1, pytest.approx(1.0), 1.0)
    assert info.value.requested == pytest.approx(0.25)
    assert "reading" in str(info.value) and DAY1 in str(info.value)
    # A refused spend charges nothing, in memory or on disk.
    assert odo.spent_today(DAY1) == pytest.approx(1.0)
    assert make(tmp_path / "odo.json").spent_today(DAY1) == pytest.approx(1.0)


def test_batch_spend_is_all_or_nothing(tmp_path: Path) -> None:
    odo = make(tmp_path / "odo.json", cap=1.0, eps=0.25)
    odo.spend(DAY1, n=3)
    assert odo.can_spend(DAY1, n=1) and not odo.can_spend(DAY1, n=2)
    with pytest.raises(BudgetExhausted):
        odo.spend(DAY1, n=2)
    assert odo.spent_today(DAY1) == pytest.approx(0.75)
    odo.spend(DAY1, n=1)
    assert odo.spent_today(DAY1) == pytest.approx(1.0)


def test_a_full_day_of_readings_fits_its_cap_exactly(tmp_path: Path) -> None:
    # 288 five-minute readings at 0.1 sum to more than 28.8 in binary floating point; they must still fit.
    odo = make(tmp_path / "odo.json", cap=28.8, eps=0.1)
    odo.spend(DAY1, n=100)
    for _ in range(188):
        odo.spend(DAY1)
    assert odo.report()["daily_readings"][DAY1] == 288
    assert not odo.can_spend(DAY1)


def test_new_day_resets_daily_total_not_lifetime(tmp_path: Path) -> None:
    odo = make(tmp_path / "odo.json", cap=0.5, eps=0.25)
    odo.spend(DAY1, n=2)
    assert not odo.can_spend(DAY1)
    assert odo.spent_today(DAY2) == 0.0 and odo.can_spend(DAY2)
    odo.spend(DAY2)
    assert odo.spent_today(DAY1) == pytest.approx(0.5)
    assert odo.spent_today(DAY2) == pytest.approx(0.25)
    assert odo.lifetime == pytest.approx(0.75)


def test_report_states_unit_delta_and_totals(tmp_path: Path) -> None:
    odo = make(tmp_path / "odo.json", cap=2.0, eps=0.5, mech="piecewise")
    odo.spend(DAY2)
    odo.spend(DAY1, n=2)
    rep = odo.report()
    assert rep["unit"] == "reading"
    assert rep["delta"] == 0.0
    assert rep["mechanism"] == "piecewise"
    assert rep["epsilon_per_reading"] == 0.5
    assert rep["daily_cap"] == 2.0
    assert rep["daily"] == {DAY1: 1.0, DAY2: 0.5}
    assert list(rep["daily"]) == [DAY1, DAY2]
    assert rep["daily_readings"] == {DAY1: 2, DAY2: 1}
    assert rep["lifetime"] == pytest.approx(1.5) and rep["lifetime_readings"] == 3
    assert "accountant" in rep
    json.dumps(rep)  # serialisable as is
    on_disk = json.loads((tmp_path / "odo.json").read_text())
    assert on_disk["unit"] == "reading" and on_disk["delta"] == 0.0


def _tamper(edit: Callable[[dict], object]) -> Callable[[dict], bytes]:
    def apply(doc: dict) -> bytes:
        edit(doc)
        return json.dumps(doc).encode()

    return apply


CORRUPTIONS = {
    "empty": lambda doc: b"",
    "not-json": lambda doc: b"{not json",
    "not-utf8": lambda doc: b"\xff\xfe",
    "array": lambda doc: b"[]",
    "other-format": _tamper(lambda d: d.update(format="something else")),
    "other-unit": _tamper(lambda d: d.update(unit="day")),
    "missing-days": _tamper(lambda d: d.pop("days")),
    "bad-day-key": _tamper(lambda d: d["days"].update(yesterday={"epsilon": 0.1, "readings": 1})),
    "negative-epsilon": _tamper(lambda d: d["days"][DAY1].update(epsilon=-0.5)),
    "lifetime-disagrees": _tamper(lambda d: d["lifetime"].update(epsilon=0.0)),
    "readings-not-int": _tamper(lambda d: d["days"][DAY1].update(readings="2")),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_state_raises_and_is_kept(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "odo.json"
    make(path).spend(DAY1, n=2)
    make(path)  # the valid state loads
    content = CORRUPTIONS[kind](json.loads(path.read_text()))
    path.write_bytes(content)
    with pytest.raises(OdometerStateError, match="corrupt"):
        make(path)
    assert path.read_bytes() == content  # never silently reset


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="daily_cap"):
        make(tmp_path / "a.json", cap=0.0)
    with pytest.raises(ValueError, match="epsilon_per_reading"):
        make(tmp_path / "a.json", eps=float("nan"))
    with pytest.raises(ValueError, match="mechanism"):
        make(tmp_path / "a.json", mech="gaussian")
    with pytest.raises(ValueError, match="daily_cap"):
        make(tmp_path / "a.json", cap=0.1, eps=0.25)
    odo = make(tmp_path / "a.json")
    for bad_day in ("2026-1-1", "01/01/2026", "2026-02-30", 20260101):
        with pytest.raises(ValueError, match="day"):
            odo.spend(bad_day)  # type: ignore[arg-type]
    for bad_n in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n must"):
            odo.spend(DAY1, n=bad_n)  # type: ignore[arg-type]
    assert not (tmp_path / "a.json").exists()  # nothing was spent, nothing written


@pytest.mark.parametrize("failing", ["replace", "fsync", "write"])
def test_crash_mid_write_keeps_previous_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    path = tmp_path / "odo.json"
    odo = make(path)
    odo.spend(DAY1)
    before = path.read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("simulated crash")

    if failing == "replace":
        monkeypatch.setattr(os, "replace", boom)
    elif failing == "fsync":
        monkeypatch.setattr(os, "fsync", boom)
    else:
        monkeypatch.setattr(json, "dumps", boom)
    with pytest.raises(OSError, match="simulated crash"):
        odo.spend(DAY1)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["odo.json"]  # no temp file left behind
    assert odo.spent_today(DAY1) == pytest.approx(0.25)  # memory matches disk
    assert make(path).spent_today(DAY1) == pytest.approx(0.25)
    odo.spend(DAY1)  # and it keeps working afterwards
    assert make(path).spent_today(DAY1) == pytest.approx(0.5)


_CHILD = """
import sys
from pathlib import Path
from device.odometer import PrivacyOdometer
odo = PrivacyOdometer(Path(sys.argv[1]), daily_cap=1e9, mechanism="laplace", epsilon_per_reading=0.5)
print("ready", flush=True)
while True:
    odo.spend("2026-03-01")
"""


def test_sigkill_at_any_moment_leaves_a_valid_state(tmp_path: Path) -> None:
    """Kill a process that spends in a tight loop; every surviving file must load and be self-consistent."""
    path = tmp_path / "odo.json"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    last = 0
    for delay in (0.05, 0.11, 0.2, 0.03, 0.17):
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, env=env, cwd=tmp_path
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        odo = make(path, cap=1e9, eps=0.5, mech="laplace")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["odo.json"]  # stale temp files cleared
        readings = odo.report()["daily_readings"].get("2026-03-01", 0)
        assert readings >= last  # never loses a committed spend
        assert odo.lifetime == pytest.approx(0.5 * readings)
        last = readings
    assert last > 0


def test_utc_day() -> None:
    assert utc_day(1_767_225_600) == "2026-01-01"  # 2026-01-01T00:00:00Z
    assert utc_day(1_767_225_599.5) == "2025-12-31"
    later = dt.datetime(2026, 1, 1, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    assert utc_day(later) == "2026-01-02"
    with pytest.raises(ValueError):
        utc_day(dt.datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        utc_day(float("nan"))
