"""`wearfed demo`, `replay`, `cohort`, `sweep`: the whole federation on this machine; `wearfed import`: real CGM
exports into the files hospitals, devices and scenarios read."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `minimum` (argparse names the flag in its error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def positive(text: str) -> float:
    """An argparse type: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    _register_import(sub)
    demo = sub.add_parser("demo", help="run a whole federation on loopback and print each round")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="directory for summary, db and logs")
    demo.add_argument("--seed", type=count(0), help="default: the demo scenario's (sim/scenarios/demo.toml)")
    demo.add_argument("--gateways", type=count(0))
    demo.add_argument("--devices-per-gateway", type=count(1))
    demo.add_argument("--hospitals", type=count(0))
    demo.add_argument("--rounds", type=count(1))
    demo.add_argument("--days", type=positive, help="simulated days the devices stream")
    demo.add_argument("--accel", type=positive, help="simulated seconds per wall second")
    demo.add_argument("--source", choices=("uva-padova", "synthetic"), help="virtual patients")
    demo.add_argument("--ldp-mechanism", choices=("none", "laplace", "duchi", "piecewise", "hybrid"))
    demo.add_argument("--ldp-unit", choices=("patient-day", "reading"),
                      help="device privacy unit: patient-day (default: one budget for everything a device releases "
                           "in a UTC day) or reading (the labelled event-level option)")
    demo.add_argument("--ldp-epsilon", type=positive,
                      help="device epsilon per patient-day (default 8), or per reading with --ldp-unit reading")
    demo.add_argument("--broker", choices=("auto", "mosquitto", "amqtt"), default="auto")
    demo.add_argument("--keep-open", action="store_true",
                      help="keep the federation up after the last round, to look around the dashboard, until Ctrl-C")
    demo.set_defaults(func=_demo)

    replay = sub.add_parser("replay", help="replay a scenario (shipped name or TOML path) with real processes")
    replay.add_argument("scenario", help="demo, clinic-week, faults, scale, attack-drill, or a path to a scenario "
                                         "TOML file")
    replay.add_argument("--out", type=Path, required=True)
    replay.add_argument("--broker", choices=("auto", "mosquitto", "amqtt"), default="auto")
    replay.add_argument("--ray", metavar="auto|ADDRESS", default=None,
                        help="scale study only: train the pools' nodes of each round as Ray tasks; 'auto' joins a "
                             "running cluster or starts a local one, or a cluster address (needs the 'scale' extra; "
                             "docs/scale.md)")
    replay.set_defaults(func=_replay)

    cohort = sub.add_parser("cohort", help="virtual-patient cohorts (UVA/Padova T1D model)")
    cohort_sub = cohort.add_subparsers(dest="cohort_cmd", required=True)
    gen = cohort_sub.add_parser("generate", help="simulate a cohort and write per-patient Parquet traces")
    gen.add_argument("--patients", type=int, required=True)
    gen.add_argument("--days", type=float, required=True)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--sensor", default="dexcom-g7", help="dexcom-g7, dexcom-g6, libre-3 (or libre3), guardianrt, ...")
    gen.add_argument("--no-noise", action="store_true", help="noise-free sensor (wear effects stay)")
    gen.add_argument("--out", type=Path, required=True)
    gen.set_defaults(func=_cohort_generate)

    sweep = sub.add_parser("sweep", help="privacy-utility sweep: device release x DP-SGD epsilon per patient x "
                                         "population (resumable; CSV, markdown and an HTML frontier plot)")
    sweep.add_argument("--out", type=Path, required=True)
    sweep.add_argument("--source", choices=("uva-padova", "synthetic"), default="uva-padova")
    sweep.add_argument("--seed", type=int, default=7)
    sweep.add_argument("--days", type=float, default=4.0, help="simulated days of training data per patient")
    sweep.add_argument("--rounds", type=int, default=5)
    sweep.add_argument("--populations", help="comma-separated training patients (default 30,300,3000)")
    sweep.add_argument("--device", help="comma-separated device designs with epsilon per patient-day, e.g. "
                                        "none,per-reading:2304,per-reading:8 (the default), or "
                                        "package.module:function:8 for another design")
    sweep.add_argument("--dp", help="comma-separated DP-SGD epsilons per patient, 'none' for off (default "
                                    "none,8,4,2,1)")
    sweep.add_argument("--day-release", help="comma-separated device epsilons per patient-day for the daily "
                                             "sufficient-statistics release (gram-gauss, linear forecaster), 'none' "
                                             "to skip (default 16,8,4,2,1)")
    sweep.add_argument("--heldout-patients", type=int, default=60)
    sweep.add_argument("--public-pretrain", type=positive, default=0.0, metavar="DAYS",
                       help="start from a model trained without privacy on DAYS of the 30 published UVA/Padova "
                            "subjects (public data, sim/public_model.py); 0: random initial weights (default)")
    sweep.add_argument("--dp-epochs", type=count(1), default=None,
                       help="DP-SGD passes over each node's patients per round (default 40; 10 suits a pretrained "
                            "start)")
    sweep.add_argument("--ray", metavar="auto|ADDRESS", default=None,
                       help="run the settings as Ray tasks: 'auto' joins a running cluster or starts a local one, "
                            "or a cluster address (needs the 'scale' extra; docs/scale.md)")
    sweep.add_argument("--merge", type=Path, nargs="+", metavar="DIR",
                       help="only merge these sweep directories (same options, e.g. populations run in parallel) "
                            "into --out and rewrite its CSV, markdown and plot")
    sweep.set_defaults(func=_sweep)


def _register_import(sub: argparse._SubParsersAction) -> None:
    from sim.importers.load import FORMATS  # stdlib + numpy only

    imp = sub.add_parser("import", help="real CGM exports (Nightscout, Dexcom Clarity, LibreView, CSV) into a "
                                        "hospital's clinical.csv and devices' traces")
    imp.add_argument("format", choices=FORMATS, help="the exports' format (all FILEs in one format)")
    imp.add_argument("files", nargs="+", type=Path, metavar="FILE",
                     help="export files; Nightscout: entries and treatments JSON of one site")
    imp.add_argument("--out", type=Path, required=True, help="directory for clinical.csv, device-traces.npz and "
                                                              "import-summary.json")
    imp.add_argument("--patient", help="the id of the one person every FILE belongs to (default: each file's name)")
    imp.add_argument("--tz", help="IANA zone of timestamps without an offset (Clarity, LibreView, naive ISO); "
                                  "default UTC")
    imp.add_argument("--units", choices=("mg/dL", "mmol/L"), help="csv only: the unit of a bare 'glucose' column")
    imp.add_argument("--date-order", choices=("DMY", "MDY"), help="libreview only: when no date proves the order")
    imp.add_argument("--include-scans", action="store_true", help="libreview only: add scans to historic readings")
    bad = imp.add_mutually_exclusive_group()
    bad.add_argument("--strict", action="store_const", dest="errors", const="raise",
                     help="an out-of-range value stops the import too (default: counted, reported and left out)")
    bad.add_argument("--drop-bad-rows", action="store_const", dest="errors", const="drop",
                     help="count, report and leave out malformed rows as well (default: exit 2 at the first)")
    imp.add_argument("--force", action="store_true", help="replace earlier outputs in --out")
    imp.set_defaults(func=_import, errors="drop-out-of-range")


def _import(args: argparse.Namespace) -> int:
    from sim.cgm_import import ImportOptions, format_summary, run_import

    summary = run_import(ImportOptions(fmt=args.format, files=tuple(args.files), out=args.out, tz=args.tz,
                                       patient=args.patient, units=args.units, date_order=args.date_order,
                                       include_scans=args.include_scans, errors=args.errors, force=args.force))
    print(format_summary(summary))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from sim.demo import DemoConfig, run_demo

    cfg = DemoConfig(out=args.out, seed=args.seed, gateways=args.gateways, devices_per_gateway=args.devices_per_gateway,
                     hospitals=args.hospitals, rounds=args.rounds, days=args.days, accel=args.accel,
                     ldp_mechanism=args.ldp_mechanism, ldp_unit=args.ldp_unit, ldp_epsilon=args.ldp_epsilon,
                     source=args.source, broker=args.broker, keep_open=args.keep_open)
    return _exit_code(run_demo(cfg))


def _exit_code(doc: dict) -> int:
    """0 when every round ended in a model, no reading was lost, and the release checks and the attack drill (if
    any) passed (`doc` is read through `sim.summary.RunSummary`, or `RunBrief` for one run of a scale study)."""
    from sim.summary import RunBrief, RunSummary
    from sim.wrist import passed

    run = RunSummary.model_validate(doc) if "scenario" in doc else RunBrief.model_validate(doc)
    rounds_ok = all(r.model_version is not None for r in run.rounds)
    release_ok = passed(getattr(run, "release_checks", None) or {"skipped": "not run"})
    drill_ok = (getattr(run, "attack_drill", None) or {"contained_all": True})["contained_all"]
    return 0 if rounds_ok and release_ok and drill_ok and run.readings.lost == 0 else 1


def _replay(args: argparse.Namespace) -> int:
    from sim.replay import run_replay
    from sim.scale import run_scale
    from sim.scenario import load_scenario

    s = load_scenario(args.scenario)
    if args.ray and s.scale is None:
        raise SystemExit(f"--ray applies to the scale study only: scenario {s.scenario.name!r} has no [scale] "
                         "section")
    if s.scale is not None:
        summary = run_scale(s, args.out, broker=args.broker, ray=args.ray)
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from sim.executors import executor
    from sim.study import StudyConfig
    from sim.sweep import DAY_RELEASE_GRID, DEVICE_GRID, DP_GRID, POPULATIONS, run_sweep

    def numbers(text: str | None, default: tuple, cast=float) -> tuple:  # noqa: ANN001
        if text is None:
            return default
        return tuple(None if v == "none" else cast(v) for v in text.split(","))

    def devices(text: str | None) -> tuple:
        if text is None:
            return DEVICE_GRID
        out = []
        for item in text.split(","):  # "design" or "design:epsilon-per-day" (a design may be module:function)
            head, _, tail = item.rpartition(":")
            try:
                out.append((head, float(tail)) if head else (item, None))
            except ValueError:
                out.append((item, None))
        return tuple(out)

    import torch

    from sim.sweep import merge

    torch.set_num_threads(1)  # a shared small machine: one core per sweep process (run populations in parallel)
    console = Console()
    tuned = {} if args.dp_epochs is None else {"dp_epochs": args.dp_epochs}
    base = StudyConfig(source=args.source, seed=args.seed, days=args.days, rounds=args.rounds,
                       heldout_patients=args.heldout_patients, public_pretrain_days=args.public_pretrain, **tuned)
    if args.merge:
        try:
            merge(args.out, args.merge, base)
        except ValueError as e:
            console.print(f"wearfed sweep --merge: {e}")
            return 2
        console.print((args.out / "sweep.md").read_text())
        return 0
    ex = executor(args.ray)
    console.print(f"settings run {ex.name}")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("sweep", total=None)

        def progress(msg: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=msg)

        try:
            run_sweep(base, args.out, populations=numbers(args.populations, POPULATIONS, int),
                      devices=devices(args.device), dp_grid=numbers(args.dp, DP_GRID),
                      day_release=tuple(e for e in numbers(args.day_release, DAY_RELEASE_GRID) if e is not None),
                      progress=progress, executor=ex)
        except ValueError as e:  # a directory of another configuration, an unknown device design
            console.print(f"wearfed sweep: {e}")
            return 2
        finally:
            ex.close()
    console.print((args.out / "sweep.md").read_text())
    console.print(f"frontier plot: {args.out / 'sweep.html'}")
    return 0
