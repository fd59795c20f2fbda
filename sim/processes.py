"""Starting and stopping the federation's real processes (each a `wearfed` subcommand) for a replay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from federation.runtime import terminate

M = TypeVar("M", bound=BaseModel)


@dataclass
class ProcessGroup:
    log_dir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    finite: set[str] = field(default_factory=set)  # processes that end by themselves (fleets)
    down: set[str] = field(default_factory=set)  # killed on purpose (a fault), until restarted
    envs: dict[str, dict[str, str]] = field(default_factory=dict)  # extra environment of each, for restarts

    def start(self, name: str, args: list[str], *, env: dict[str, str] | None = None,
              finite: bool = False) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child for its lifetime
        proc = subprocess.Popen([sys.executable, "-m", "federation.cli", *args], stdout=log, stderr=log,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        self.procs[name] = proc
        self.envs[name] = dict(env or {})
        self.down.discard(name)
        if finite:
            self.finite.add(name)
        return proc

    def check_alive(self, *names: str) -> None:
        """Raise if a daemon has exited, or if any process has exited with an error."""
        for name in names or tuple(self.procs):
            if name in self.down:
                continue
            code = self.procs[name].poll()
            if code is not None and (code != 0 or name not in self.finite):
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with code {code}; last log lines:\n{tail}")

    def cpu_seconds(self, names: list[str]) -> dict[int, float] | None:
        """User plus system CPU time each named live process has used so far, by pid (a restarted process is a new
        one); Linux's /proc, None elsewhere."""
        used = {}
        for name in names:
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            try:
                stat = Path(f"/proc/{proc.pid}/stat").read_text()
            except OSError:
                return None
            fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
            used[proc.pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (proc(5))
        return used

    def kill(self, name: str) -> None:
        """SIGKILL, as a crash: no chance to checkpoint. The process counts as down until started again."""
        self.down.add(name)
        self.procs[name].kill()
        self.procs[name].wait()

    def stop(self, name: str, *, timeout: float = 15.0) -> int | None:
        return terminate(self.procs[name], timeout=timeout)

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)


def read_json(path: Path) -> dict:
    """Read a status file written atomically by another process; {} while it does not exist yet."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def read_status(path: Path, model: type[M]) -> M | None:
    """A daemon's status file (`federation.status`), validated; None while it does not exist yet."""
    doc = read_json(path)
    return model.model_validate(doc) if doc else None


def wait_until(predicate, *, timeout: float, what: str, interval: float = 0.2) -> None:  # noqa: ANN001
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
