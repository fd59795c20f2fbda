"""`wearfed demo`: the whole federation on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run a whole federation on loopback and print each round")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="directory for summary, db and logs")
    demo.add_argument("--seed", type=int, help="default: the demo scenario's (sim/scenarios/demo.toml)")
    demo.add_argument("--gateways", type=int)
    demo.add_argument("--devices-per-gateway", type=int)
    demo.add_argument("--hospitals", type=int)
    demo.add_argument("--rounds", type=int)
    demo.add_argument("--days", type=float, help="simulated days the devices stream")
    demo.add_argument("--accel", type=float, help="simulated seconds per wall second")
    demo.add_argument("--source", choices=("uva-padova", "synthetic"), help="virtual patients")
    demo.add_argument("--ldp-mechanism", choices=("none", "laplace", "duchi", "piecewise", "hybrid"))
    demo.add_argument("--ldp-epsilon", type=float, help="device epsilon per reading")
    demo.add_argument("--broker", choices=("auto", "mosquitto", "amqtt"), default="auto")
    demo.set_defaults(func=_demo)

    replay = sub.add_parser("replay", help="replay a scenario (shipped name or TOML path) with real processes")
    replay.add_argument("scenario", help="demo, clinic-week, faults, scale, or a path to a scenario TOML file")
    replay.add_argument("--out", type=Path, required=True)
    replay.add_argument("--broker", choices=("auto", "mosquitto", "amqtt"), default="auto")
    replay.set_defaults(func=_replay)

    cohort = sub.add_parser("cohort", help="virtual-patient cohorts (UVA/Padova T1D model)")
    cohort_sub = cohort.add_subparsers(dest="cohort_cmd", required=True)
    gen = cohort_sub.add_parser("generate", help="simulate a cohort and write per-patient Parquet traces")
    gen.add_argument("--patients", type=int, required=True)
    gen.add_argument("--days", type=float, required=True)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--sensor", default="dexcom-g7", help="dexcom-g7, dexcom-g6, libre3, guardianrt, ...")
    gen.add_argument("--no-noise", action="store_true", help="noise-free sensor (wear effects stay)")
    gen.add_argument("--out", type=Path, required=True)
    gen.set_defaults(func=_cohort_generate)

    sweep = sub.add_parser("sweep", help="privacy-utility sweep: device LDP epsilon x DP-SGD epsilon")
    sweep.add_argument("--out", type=Path, required=True)
    sweep.add_argument("--source", choices=("uva-padova", "synthetic"), default="uva-padova")
    sweep.add_argument("--seed", type=int, default=7)
    sweep.add_argument("--days", type=float, default=7.0, help="simulated days of training data per patient")
    sweep.add_argument("--rounds", type=int, default=5)
    sweep.add_argument("--ldp", help="comma-separated LDP epsilons per reading, 'none' for off (default none,8,4,2)")
    sweep.add_argument("--dp", help="comma-separated DP-SGD epsilons, 'none' for off (default none,8,4,2,1,0.5)")
    sweep.set_defaults(func=_sweep)


def _demo(args: argparse.Namespace) -> int:
    from sim.demo import DemoConfig, run_demo

    cfg = DemoConfig(out=args.out, seed=args.seed, gateways=args.gateways, devices_per_gateway=args.devices_per_gateway,
                     hospitals=args.hospitals, rounds=args.rounds, days=args.days, accel=args.accel,
                     ldp_mechanism=args.ldp_mechanism, ldp_epsilon=args.ldp_epsilon, source=args.source,
                     broker=args.broker)
    return _exit_code(run_demo(cfg))


def _exit_code(summary: dict) -> int:
    """0 when every round ended in a model, no reading was lost and the release checks (if any) passed."""
    from sim.wrist import passed

    rounds_ok = all(r.get("model_version") is not None for r in summary["rounds"])
    release_ok = passed(summary.get("release_checks") or {"skipped": "not run"})
    return 0 if rounds_ok and release_ok and summary["readings"]["lost"] == 0 else 1


def _replay(args: argparse.Namespace) -> int:
    from sim.replay import run_replay
    from sim.scale import run_scale
    from sim.scenario import load_scenario

    s = load_scenario(args.scenario)
    if s.scale is not None:
        summary = run_scale(s, args.out, broker=args.broker)
        return max(_exit_code(run) for run in summary["runs"].values())
    return _exit_code(run_replay(s, args.out, broker=args.broker))


def _cohort_generate(args: argparse.Namespace) -> int:
    from sim.cohort import generate_cohort

    path = generate_cohort(patients=args.patients, days=args.days, seed=args.seed, out=args.out, sensor=args.sensor,
                           noise=not args.no_noise, progress=True)
    print(f"wrote {args.patients} patients x {args.days} days to {path}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sim.study import StudyConfig
    from sim.sweep import DP_GRID, LDP_GRID, run_sweep

    def grid(text: str | None, default: tuple) -> tuple:
        if text is None:
            return default
        return tuple(None if v == "none" else float(v) for v in text.split(","))

    console = Console()
    base = StudyConfig(source=args.source, seed=args.seed, days=args.days, rounds=args.rounds)
    run_sweep(base, args.out, ldp_grid=grid(args.ldp, LDP_GRID), dp_grid=grid(args.dp, DP_GRID),
              progress=lambda msg: console.log(msg))
    console.print((args.out / "sweep.md").read_text())
    return 0
