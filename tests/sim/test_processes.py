"""`sim.processes.ProcessGroup.cpu_seconds`: the CPU a replay's processes used, read from Linux's /proc."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sim.processes import ProcessGroup

BURN = "import time\nwhile time.process_time() < 0.7: pass\nprint('done', flush=True)\ntime.sleep(60)"
IDLE = "import time\nprint('done', flush=True)\ntime.sleep(60)"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux's /proc")
def test_cpu_seconds_counts_the_named_live_processes(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path)
    for name, code in (("busy", BURN), ("idle", IDLE)):
        group.procs[name] = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        for proc in group.procs.values():
            assert proc.stdout.readline().strip() == "done"  # the busy one has used 0.7 s of CPU by now
        busy, idle = group.cpu_seconds(["busy"]), group.cpu_seconds(["idle"])
        assert busy >= 0.6 and idle < 0.5  # /proc counts in ticks of 10 ms
        assert group.cpu_seconds(["busy", "idle"]) >= busy + idle - 0.02  # the sum
        assert group.cpu_seconds(["no-such-process"]) == 0
        group.procs["idle"].kill()
        group.procs["idle"].wait()
        assert group.cpu_seconds(["idle"]) == 0  # an exited process is not counted
    finally:
        for proc in group.procs.values():
            proc.kill()
            proc.wait()
