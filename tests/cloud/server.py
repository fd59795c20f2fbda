"""Test helper: run `wearfed cloud serve` as a real subprocess (so it can be SIGKILLed) and wait for it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from sim.broker import free_port
from tests.conftest import ADMIN_TOKEN


class ServerProcess:
    def __init__(self, *, db_url: str, state_dir: Path, log: Path, dev: bool = True,
                 env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "federation.cli", "cloud", "serve", "--port", str(self.port), "--db", db_url,
                "--state-dir", str(state_dir), "--log-level", "warning"]
        if dev:
            args.append("--dev-insecure-custodian")
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=self._log, start_new_session=True,
                                     env={**os.environ, "WEARFED_ADMIN_TOKEN": ADMIN_TOKEN, **(env or {})})
        deadline = time.time() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cloud exited with {self.proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                raise RuntimeError("cloud did not start")
            time.sleep(0.1)

    def wait_killed(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
