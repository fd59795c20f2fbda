"""Test helper: run `wearfed cloud serve` as a real subprocess (so it can be SIGKILLed) and wait for it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from federation.tls import tls_context
from sim.broker import free_port
from tests.conftest import ADMIN_TOKEN, COMPLIANCE_TOKEN


class ServerProcess:
    def __init__(self, *, db_url: str, state_dir: Path, log: Path, dev: bool = True,
                 env: dict[str, str] | None = None, port: int | None = None, crash_at: str | None = None,
                 extra_args: list[str] | None = None, tls: object | None = None) -> None:
        # tls: federation.tls.ServerFiles: serve https with its certificate, checked against its CA
        self.port = port or free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.verify = tls_context(tls.ca) if tls else True
        # crash_at: SIGKILL itself at a named point (tests/cloud/crashing_cloud.py, a test-only launcher)
        # (by path: a `tests` package that some wheels install into site-packages would shadow `-m tests.cloud...`)
        crashing = str(Path(__file__).with_name("crashing_cloud.py"))
        launcher = [crashing, crash_at] if crash_at else ["-m", "federation.cli"]
        args = [sys.executable, *launcher, "cloud", "serve", "--port", str(self.port), "--db", db_url,
                "--state-dir", str(state_dir), "--log-level", "warning"]
        if dev:
            args.append("--dev-insecure-custodian")
        if tls:
            args += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
        args += extra_args or []
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=self._log, start_new_session=True,
                                     env={**os.environ, "WEARFED_ADMIN_TOKEN": ADMIN_TOKEN,
                                          "WEARFED_COMPLIANCE_TOKEN": COMPLIANCE_TOKEN, **(env or {})})
        deadline = time.time() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cloud exited with {self.proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1, verify=self.verify).status_code == 200:
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
