"""Timed faults of a replay: what each kind does to the running federation at its start and end edges."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sim.broker import start_mosquitto, wait_for_port
from sim.scenario import Fault

if TYPE_CHECKING:
    from sim.replay import Replay


def _broker_outage(r: Replay, f: Fault, edge: str) -> str:
    if r.broker.kind != "mosquitto":
        raise RuntimeError("broker_outage needs the mosquitto broker (restartable on the same port)")
    if edge == "start":
        r.broker.stop()
        return f"broker stopped for {f.duration_minutes} simulated minutes"
    r.broker = start_mosquitto(r.broker.port, r.out / "broker")
    return "broker restarted on the same port with its persisted sessions"


def _restart(name: str, r: Replay, edge: str, *, args: list[str] | None = None,
             env: dict[str, str] | None = None) -> str:
    proc = r.group.procs[name]
    if edge == "start":
        r.group.kill(name)
        return f"{name} killed (SIGKILL)"
    r.group.start(name, args if args is not None else proc.args[3:], env=env or r.group.envs.get(name))
    return f"{name} restarted"


def _gateway_crash(r: Replay, f: Fault, edge: str) -> str:
    return _restart(f.target, r, edge)


def _cloud_crash(r: Replay, f: Fault, edge: str) -> str:
    detail = _restart("cloud", r, edge, args=r.cloud_args, env=r.cloud_env)
    if edge == "end":
        wait_for_port("127.0.0.1", r.cloud_port, timeout=60)
    return detail


def _partition(r: Replay, f: Fault, edge: str) -> str:
    for relay in r.relays[f.target].values():
        relay.cut() if edge == "start" else relay.restore()
    return f"{f.target} {'cut off from' if edge == 'start' else 'reconnected to'} the broker and the cloud"


def _battery_death(r: Replay, f: Fault, edge: str) -> str:
    """The gateway's last device loses power for good: its process dies and is never restarted."""
    name = next(n for n in r.group.procs if n.startswith(f"device-{f.target}-dev"))
    if edge == "start":
        r.group.kill(name)
        return f"{name.removeprefix('device-')} lost power (readings still on it are never sent)"
    return f"{name.removeprefix('device-')} stays dead"


def _sensor_drift(r: Replay, f: Fault, edge: str) -> str:
    return f"drift of {f.drift_mgdl_per_day or 10.0} mg/dL/day baked into the traces of {f.target or 'every device'}" \
        if edge == "start" else "drift continues (sensors are not recalibrated)"


FAULT_ACTIONS = {"broker_outage": _broker_outage, "gateway_crash": _gateway_crash, "cloud_crash": _cloud_crash,
                 "partition": _partition, "battery_death": _battery_death, "sensor_drift": _sensor_drift}
