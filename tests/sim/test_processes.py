"""`sim.processes.ProcessGroup.cpu_seconds` and the replay's CPU per tier: what /proc says each process used agrees
with the process's own count; a process started or ended between two readings is counted from zero or left out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sim.processes import ProcessGroup
from sim.replay import Replay

# each child spends CPU by its own clock, then reports its own count and sleeps
BURN = ("import time\nwhile time.process_time() < 0.3: pass\nprint(time.process_time(), flush=True)\n"
        "time.sleep(60)")
IDLE = "import time\nprint(time.process_time(), flush=True)\ntime.sleep(60)"
TICK = 0.01  # /proc counts in clock ticks (1/100 s on Linux)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux's /proc")
def test_cpu_seconds_agrees_with_each_process_own_count(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path)
    for name, code in (("busy", BURN), ("idle", IDLE)):
        group.procs[name] = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        own = {name: float(proc.stdout.readline()) for name, proc in group.procs.items()}
        read = group.cpu_seconds(["busy", "idle", "no-such-process"])
        pids = {name: proc.pid for name, proc in group.procs.items()}
        assert set(read) == set(pids.values())  # one entry per live process, by pid
        for name, pid in pids.items():  # the child's own count, then at most its print and a few ticks
            assert own[name] - 2 * TICK <= read[pid] <= own[name] + 5 * TICK, (name, own[name], read[pid])
        group.procs["idle"].kill()
        group.procs["idle"].wait()
        assert set(group.cpu_seconds(["busy", "idle"])) == {pids["busy"]}  # an exited process is not read
    finally:
        for proc in group.procs.values():
            proc.kill()
            proc.wait()


def test_cpu_between_counts_new_processes_from_zero_and_leaves_ended_ones_out() -> None:
    before = {"cloud": {10: 5.0}, "participants": {20: 1.0, 21: 2.0}}
    after = {"cloud": {10: 6.5}, "participants": {20: 1.5, 22: 0.25}, "region_relays": {30: 1.0}}
    # 21 ended, 22 started; the relays were not there at the first reading
    assert Replay._cpu_between(before, after) == {"cloud": 1.5, "participants": 0.75}
    assert Replay._cpu_between({"cloud": None}, after) == {}  # no /proc
