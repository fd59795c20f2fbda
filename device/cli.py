"""`wearfed device run` (one device) and `wearfed fleet run` (many devices in one process)."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from federation.clock import DEFAULT_SIM_START, SimClock
from federation.config import add_config_flag, apply_config


def _common(p: argparse.ArgumentParser) -> None:
    add_config_flag(p)
    p.add_argument("--broker-host", default="127.0.0.1")
    p.add_argument("--broker-port", type=int, default=1883)
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--days", type=float, default=1.0, help="simulated days of readings to send")
    p.add_argument("--accel", type=float, default=300.0, help="simulated seconds per wall second")
    p.add_argument("--sim-start", type=float, default=DEFAULT_SIM_START, help="simulated unix time of t=0")
    p.add_argument("--wall-start", type=float, default=None, help="wall unix time of t=0 (default: now)")
    p.add_argument("--ldp-mechanism", default="hybrid", help="laplace, duchi, piecewise, hybrid, or none")
    p.add_argument("--ldp-epsilon", type=float, default=8.0, help="epsilon per reading (pure LDP)")
    p.add_argument("--batch-size", type=int, default=1, help="readings per MQTT publish")
    p.add_argument("--status-file", type=Path, help="write counters here as JSON, atomically")


def register(sub: argparse._SubParsersAction) -> None:
    dev = sub.add_parser("device", help="one simulated CGM device")
    dev_sub = dev.add_subparsers(dest="device_cmd", required=True)
    run = dev_sub.add_parser("run", help="run one device until its trace ends")
    _common(run)
    run.add_argument("--device-id", required=True)
    run.add_argument("--gateway", required=True, help="gateway id this device reports to")
    run.set_defaults(func=_run_device)

    fleet = sub.add_parser("fleet", help="many simulated devices in one process")
    fleet_sub = fleet.add_subparsers(dest="fleet_cmd", required=True)
    frun = fleet_sub.add_parser("run", help="run a fleet until every trace ends")
    _common(frun)
    frun.add_argument("--gateways", required=True, help="comma-separated gateway ids")
    frun.add_argument("--devices-per-gateway", type=int, default=10)
    frun.set_defaults(func=_run_fleet)


def _setup(args: argparse.Namespace):  # noqa: ANN202
    apply_config(args)
    from device.publisher import Broker
    from federation.logs import setup_logging

    setup_logging("info", name="device")
    clock = SimClock(sim_start=args.sim_start, wall_start=args.wall_start or time.time(), accel=args.accel)
    broker = Broker(args.broker_host, args.broker_port, args.username, args.password)
    eps = None if args.ldp_mechanism == "none" else args.ldp_epsilon
    return clock, broker, eps


def _run_device(args: argparse.Namespace) -> int:
    from device.fleet import run_fleet
    from device.publisher import DeviceConfig

    clock, broker, eps = _setup(args)
    cfg = DeviceConfig(device_id=args.device_id, gateway=args.gateway, seed=args.seed, days=args.days,
                       ldp_mechanism=args.ldp_mechanism, ldp_epsilon=eps, batch_size=args.batch_size)
    stats = asyncio.run(run_fleet([cfg], clock, broker, status_path=args.status_file))
    return 1 if any(s.errors for s in stats.values()) else 0


def _run_fleet(args: argparse.Namespace) -> int:
    from device.fleet import fleet_configs, run_fleet

    clock, broker, eps = _setup(args)
    configs = fleet_configs(gateways=[g for g in args.gateways.split(",") if g],
                            devices_per_gateway=args.devices_per_gateway, seed=args.seed, days=args.days,
                            ldp_mechanism=args.ldp_mechanism, ldp_epsilon=eps, batch_size=args.batch_size)
    stats = asyncio.run(run_fleet(configs, clock, broker, status_path=args.status_file))
    return 1 if any(s.errors for s in stats.values()) else 0
