"""Start an MQTT broker on loopback: Eclipse Mosquitto when installed, else the embedded amqtt (pure Python)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, *, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or (str(p) if (p := Path("/usr/sbin/mosquitto")).exists() else None)


def mosquitto_config(port: int, workdir: Path, *, extra: str = "") -> Path:
    """A config for a loopback test/demo broker; queues sized for persistent device sessions."""
    conf = workdir / "mosquitto.conf"
    # Started as root, Mosquitto drops to the `mosquitto` user, which cannot write persistence or its log in a
    # root-owned 0700 directory (pytest's tmp dirs): its sessions would then silently not survive a restart.
    run_as = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(
        run_as + f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        f"persistence true\npersistence_location {workdir}/\n"
        "max_queued_messages 100000\n"
        "max_inflight_messages 100\n"
        "log_type error\nlog_type warning\n"
        f"log_dest file {workdir}/mosquitto.log\n" + extra
    )
    return conf


@dataclass
class RunningBroker:
    host: str
    port: int
    kind: str
    _proc: subprocess.Popen | None = None
    _stop_embedded: Callable[[], None] | None = None

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._stop_embedded is not None:
            self._stop_embedded()


def start_mosquitto(port: int, workdir: Path, binary: str | None = None, *, extra: str = "") -> RunningBroker:
    """`extra`: config lines appended after the loopback listener (password file, ACL, a TLS listener)."""
    binary = binary or find_mosquitto()
    if binary is None:
        raise FileNotFoundError("mosquitto is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([binary, "-c", str(mosquitto_config(port, workdir, extra=extra))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", port)
    return RunningBroker("127.0.0.1", port, "mosquitto", _proc=proc)


def start_amqtt(port: int) -> RunningBroker:
    """The embedded broker (amqtt, MQTT 3.1.1) on its own event-loop thread; for zero-setup demos only."""
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}", "max_connections": 10_000}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="amqtt", daemon=True).start()
    broker = asyncio.run_coroutine_threadsafe(_make_amqtt(Broker, config), loop).result(timeout=15)

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(broker.shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)

    return RunningBroker("127.0.0.1", port, "amqtt", _stop_embedded=stop)


async def _make_amqtt(broker_cls, config: dict):  # noqa: ANN001, ANN202 - Broker must be built inside its loop
    broker = broker_cls(config)
    await broker.start()
    return broker


def start_broker(workdir: Path, *, prefer: str = "auto") -> RunningBroker:
    """`prefer`: "auto" (mosquitto if installed, else amqtt), "mosquitto" or "amqtt"."""
    port = free_port()
    if prefer in ("auto", "mosquitto") and find_mosquitto():
        return start_mosquitto(port, workdir)
    if prefer == "mosquitto":
        raise FileNotFoundError("mosquitto was asked for but is not installed")
    return start_amqtt(port)
