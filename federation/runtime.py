"""Process plumbing every tier shares (stdlib only, so a Pi's `wearfed[device]` has it): durable atomic file
writes, stop signals, stopping a child daemon gracefully, and exponential backoff with full jitter.

Atomic write: write a temporary file in the same directory, flush and fsync it, ``os.replace`` it over the
target, then fsync the directory so the rename itself survives power loss (POSIX rename(2) is atomic; the
directory fsync is what ext4/XFS need for durability of the new name). A kill at any point leaves the old or
the new file, never a mix; a stale ``.<name>.*.tmp`` left by a kill is never read.

Backoff: the delay before attempt n (0-based) is uniform in [0, min(cap, base * 2**n)] ("full jitter",
Brooker, AWS Architecture Blog, "Exponential Backoff And Jitter", 2015), so many clients that lost the same
server do not come back in lockstep. Jitter is not privacy randomness: `random` is fine here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable; skipped where a directory cannot be opened (e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None, durable: bool = True) -> None:
    """Replace `path` with `data` atomically and (unless not `durable`: a status file rewritten every few seconds, whose
    loss in a crash costs nothing) durably; `mode` (e.g. 0o600) is set before the rename."""
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(directory)


def atomic_write_text(path: Path, text: str, *, mode: int | None = None, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode, durable=durable)


def atomic_write_json(path: Path, doc: object, *, mode: int | None = None, indent: int | None = None,
                      durable: bool = True) -> None:
    """`doc` as JSON (keys sorted when indented, for diffable state files), written atomically."""
    atomic_write_text(path, json.dumps(doc, indent=indent, sort_keys=indent is not None) + "\n", mode=mode,
                      durable=durable)


def remove_stale_temps(path: Path) -> int:
    """Delete temporaries a kill left beside `path` (single writer assumed); returns how many."""
    path = Path(path)
    removed = 0
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
            removed += 1
    return removed


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set `stop` (call from inside the running loop): daemons finish or checkpoint, then exit."""
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)


def terminate(proc: subprocess.Popen, *, timeout: float = 15.0) -> int | None:
    """Stop a child daemon gracefully: SIGTERM, wait up to `timeout`, then SIGKILL. Its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True if `stop` was set meanwhile (the caller should wind down)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(seconds, 0.0))
    return stop.is_set()


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: `delay(n)` for attempt n = 0, 1, 2, ...; keyword-only numbers."""

    base_s: float = 0.5
    cap_s: float = 30.0
    rand: Callable[[float, float], float] = random.uniform

    def __post_init__(self) -> None:
        if not (0 < self.base_s <= self.cap_s):
            raise ValueError(f"backoff needs 0 < base_s <= cap_s, got base_s={self.base_s} cap_s={self.cap_s}")

    def ceiling(self, attempt: int) -> float:
        """The upper bound of attempt `attempt`'s delay: min(cap, base * 2**attempt)."""
        return min(self.cap_s, self.base_s * 2 ** min(max(attempt, 0), 62))

    def delay(self, attempt: int) -> float:
        return self.rand(0.0, self.ceiling(attempt))
