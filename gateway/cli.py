"""`wearfed gateway run`, `wearfed hospital run` and `wearfed hospital pool`."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from federation.config import add_config_flag, apply_config
from federation.windows import APPLY_TO, SMOOTHERS


def _node_flags(p: argparse.ArgumentParser, *, kind: str) -> None:
    add_config_flag(p)
    example = "gw-1" if kind == "gateway" else "hosp-1"
    p.add_argument("--id", required=True, help=f"this {kind}'s participant id (e.g. {example})")
    p.add_argument("--state-dir", type=Path, required=True, help="keys, node state, local database")
    p.add_argument("--enroll-token", default=os.environ.get("WEARFED_ENROLL_TOKEN"))
    _training_flags(p)


def _training_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cloud-url", default="http://127.0.0.1:8080")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-multiplier", type=float, default=1.0, help="DP-SGD Gaussian noise multiplier")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="DP-SGD per-sample clipping norm")
    p.add_argument("--batch-size", type=int, default=64, help="expected batch size (Poisson sampling)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--accountant", choices=("prv", "rdp"), default="prv")
    p.add_argument("--epsilon-cap", type=float, default=10.0, help="cumulative epsilon cap per window")
    p.add_argument("--log-level", default="info")


def _ingest_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker-host", default="127.0.0.1")
    p.add_argument("--broker-port", type=int, default=1883)
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--devices-file", type=Path,
                   help="device registry, one id per line (default: <state-dir>/devices.txt if present)")
    p.add_argument("--max-future-s", type=float,
                   help="reject readings stamped further than this past the wall clock (default 30 days)")


def _ingest_config(args: argparse.Namespace):  # noqa: ANN202
    from gateway.daemon import IngestConfig
    from gateway.ingest import DEFAULT_MAX_FUTURE_S

    return IngestConfig(broker_host=args.broker_host, broker_port=args.broker_port, username=args.username,
                        password=args.password, devices_file=args.devices_file,
                        max_future_s=DEFAULT_MAX_FUTURE_S if args.max_future_s is None else args.max_future_s,
                        release_key=getattr(args, "release_key", None))


def register(sub: argparse._SubParsersAction) -> None:
    gw = sub.add_parser("gateway", help="an edge gateway daemon")
    gw_sub = gw.add_subparsers(dest="gateway_cmd", required=True)
    run = gw_sub.add_parser("run", help="ingest device telemetry and take part in rounds until SIGTERM")
    _node_flags(run, kind="gateway")
    _ingest_flags(run)
    run.add_argument("--release-key", help="base64 Ed25519 key that signs model releases (default: trust on first use)")
    run.add_argument("--denoise", choices=SMOOTHERS, default="none",
                     help="smooth the privatised grid before windowing (measured in docs/gateway.md; off by default)")
    run.add_argument("--denoise-width", type=int, default=5, help="smoother width in 5-min bins")
    run.add_argument("--denoise-apply-to", choices=APPLY_TO, default="targets")
    run.add_argument("--drift-window-hours", type=float, default=6.0,
                     help="reading time per drift histogram sent to the cloud (docs/governance.md)")
    run.add_argument("--drift-grace-hours", type=float, default=0.5,
                     help="report a window once the newest reading is this far past its end")
    run.add_argument("--no-drift-reports", action="store_true", help="send no drift histograms")
    run.set_defaults(func=_run_gateway)

    ing = gw_sub.add_parser("ingest", help="ingest device telemetry only (no federation) until SIGTERM")
    add_config_flag(ing)
    ing.add_argument("--id", required=True, help="this gateway's id (e.g. gw-1)")
    ing.add_argument("--state-dir", type=Path, required=True, help="local database and status file")
    ing.add_argument("--log-level", default="info")
    _ingest_flags(ing)
    ing.set_defaults(func=_run_ingest)

    hosp = sub.add_parser("hospital", help="a hospital node training on local clinical data")
    hosp_sub = hosp.add_subparsers(dest="hospital_cmd", required=True)
    hrun = hosp_sub.add_parser("run", help="take part in rounds until SIGTERM")
    _node_flags(hrun, kind="hospital")
    hrun.add_argument("--data", type=Path, required=True, help="CSV with columns patient,time,glucose")
    hrun.add_argument("--eval-holdout-patients", type=int, default=0,
                      help="keep the last K patients out of training and score every candidate model on them "
                           "(federated evaluation: only the scores are sent, signed)")
    hrun.set_defaults(func=_run_hospital)
    pool = hosp_sub.add_parser("pool", help="many hospital participants in one process (large federations)")
    add_config_flag(pool)
    pool.add_argument("--spec", type=Path, required=True,
                      help="JSON {nodes: [{id, data, state_dir, enroll_token}]}; paths relative to the file")
    pool.add_argument("--training-slots", type=int, default=1, help="nodes that may train at the same time")
    _training_flags(pool)
    pool.set_defaults(func=_run_pool)


def _node_config(args: argparse.Namespace, kind: str):  # noqa: ANN202
    apply_config(args)
    from federation.logs import setup_logging
    from gateway.node import NodeConfig

    setup_logging(args.log_level, name=f"{kind}:{args.id}")
    if not args.enroll_token:
        raise SystemExit("--enroll-token (or WEARFED_ENROLL_TOKEN) is required")
    return NodeConfig(participant_id=args.id, kind=kind, cloud_url=args.cloud_url, state_dir=args.state_dir,
                      enroll_token=args.enroll_token, dp=_dp_config(args), seed=args.seed)


def _dp_config(args: argparse.Namespace):  # noqa: ANN202
    import torch

    from gateway.trainer import DPConfig

    torch.set_num_threads(1)  # several nodes share a small machine; one core each
    return DPConfig(noise_multiplier=args.noise_multiplier, max_grad_norm=args.max_grad_norm,
                    expected_batch_size=args.batch_size, lr=args.lr, delta=args.delta, accountant=args.accountant,
                    epsilon_cap=args.epsilon_cap)


def _run_gateway(args: argparse.Namespace) -> int:
    from federation.windows import Denoise
    from gateway.daemon import run_gateway

    cfg = _node_config(args, "gateway")
    from gateway.drift import DriftSettings

    denoise = Denoise(method=args.denoise, width=args.denoise_width, apply_to=args.denoise_apply_to)
    drift = None if args.no_drift_reports else DriftSettings(window_s=args.drift_window_hours * 3600,
                                                             grace_s=args.drift_grace_hours * 3600)
    asyncio.run(run_gateway(cfg, _ingest_config(args), denoise=denoise, drift=drift))
    return 0


def _run_ingest(args: argparse.Namespace) -> int:
    from federation.logs import setup_logging
    from gateway.daemon import run_ingest

    apply_config(args)
    setup_logging(args.log_level, name=f"gateway:{args.id}")
    asyncio.run(run_ingest(args.id, args.state_dir, _ingest_config(args)))
    return 0


def _run_hospital(args: argparse.Namespace) -> int:
    from gateway.hospital import run_hospital

    cfg = _node_config(args, "hospital")
    asyncio.run(run_hospital(cfg, args.data, eval_holdout=args.eval_holdout_patients))
    return 0


def _run_pool(args: argparse.Namespace) -> int:
    apply_config(args)
    from federation.logs import setup_logging
    from gateway.node import NodeConfig
    from gateway.pool import build_nodes, load_pool_spec, run_pool

    setup_logging(args.log_level, name=f"hospital-pool:{args.spec.stem}")
    if args.training_slots < 1:
        raise SystemExit("--training-slots must be at least 1")
    template = NodeConfig(participant_id="", kind="hospital", cloud_url=args.cloud_url, state_dir=Path("."),
                          enroll_token="", dp=_dp_config(args), seed=args.seed)
    nodes = build_nodes(load_pool_spec(args.spec), template)
    asyncio.run(run_pool(nodes, training_slots=args.training_slots))
    return 0
