"""`wearfed cloud serve`, `cloud create-user`, `cloud check-gates`; registers the key and ledger commands
(cloud/custody_cli.py: init-keys, unseal, init-log-key, audit verify), `wearfed model ...` (cloud/model_cli.py) and
`wearfed region serve` (cloud/region_cli.py)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cloud import region_cli
from cloud.custody_cli import db_flag, log_key_flags, log_key_source
from cloud.rbac import ROLES
from federation.config import add_config_flag, apply_config


def register(sub: argparse._SubParsersAction) -> None:
    region_cli.register(sub)  # `wearfed region serve`: the region relay runs on the cloud tier's extra
    cloud = sub.add_parser("cloud", help="the cloud aggregator")
    cloud_sub = cloud.add_subparsers(dest="cloud_cmd", required=True)
    serve = cloud_sub.add_parser("serve", help="serve the federation API (FastAPI under uvicorn)")
    add_config_flag(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    db_flag(serve)
    serve.add_argument("--state-dir", type=Path, default=Path("cloud-state"))
    serve.add_argument("--admin-token", default=os.environ.get("WEARFED_ADMIN_TOKEN"),
                       help="bootstraps the user 'admin' with this bearer token on first start "
                            "(env WEARFED_ADMIN_TOKEN)")
    serve.add_argument("--compliance-token", default=os.environ.get("WEARFED_COMPLIANCE_TOKEN"),
                       help="bootstraps the user 'compliance' (a compliance officer, the second person of the "
                            "two-person rules) on first start (env WEARFED_COMPLIANCE_TOKEN)")
    serve.add_argument("--min-contributors", type=int, default=3,
                       help="distinct contributors every round needs before its sum is decrypted (at least 3; "
                            "round openers cannot ask for fewer)")
    serve.add_argument("--epsilon-cap", type=float, default=None,
                       help="global cap on each participant's cumulative DP-SGD epsilon, in its declared unit "
                            "(per patient; per window where a node chose --dp-unit window), at the declared delta")
    serve.add_argument("--rmse-tolerance", type=float, default=None,
                       help="promotion gate: rmse30 may exceed the promoted model's by this fraction "
                            "(overrides the gates file's [accuracy] rmse30_max_regression)")
    serve.add_argument("--gates", type=Path, default=None,
                       help="promotion gates TOML (docs/governance.md); default: the shipped cloud/gates.default.toml")
    serve.add_argument("--validation", type=Path, default=None,
                       help="synthetic validation set (.npz of x, y windows) the cloud scores every model on")
    serve.add_argument("--drift-threshold", type=float, default=None,
                       help="KL divergence (nats) of recent telemetry vs training above which a drift alert is "
                            "raised (default: cloud/drift.py DEFAULT_THRESHOLD, measured in docs/governance.md)")
    serve.add_argument("--drift-min-readings", type=int, default=None,
                       help="drift reports with fewer readings are stored but not scored")
    serve.add_argument("--drift-min-reference-hours", type=float, default=None,
                       help="score drift only once the training reference covers this much reading time "
                            "(default 24)")
    serve.add_argument("--region-audit-rate", type=float, default=None,
                       help="share of region aggregates whose inputs the cloud asks for and re-sums (0..1; default "
                            "0.1, docs/scale.md)")
    serve.add_argument("--dev-insecure-custodian", action="store_true",
                       help="INSECURE: keep the CKKS secret key unsealed on this host (demos and tests only)")
    serve.add_argument("--tls-cert", type=Path, default=None,
                       help="serve https with this PEM certificate (chain); with --tls-key")
    serve.add_argument("--tls-key", type=Path, default=None,
                       help="its PEM private key (if encrypted: password in env WEARFED_TLS_KEY_PASSWORD)")
    log_key_flags(serve)
    limits = serve.add_argument_group("abuse resistance (cloud/ratelimit.py; docs/cloud.md)")
    limits.add_argument("--rate-limit", type=float, default=None,
                        help="requests per second per client address (default 500; 0: off)")
    limits.add_argument("--rate-burst", type=int, default=None, help="requests a client may burst (default 1000)")
    limits.add_argument("--auth-failures", type=int, default=None,
                        help="authentication failures (401, bad enrollment token) per address or token within "
                             "--failure-window-seconds before it is locked (default 20)")
    limits.add_argument("--failure-window-seconds", type=float, default=None,
                        help="window in which --auth-failures are counted (default 60)")
    limits.add_argument("--failure-summary-seconds", type=float, default=None,
                        help="unauthenticated or malformed requests (401/413/422/429) are counted and written as one "
                             "access.failures audit entry per this many seconds (default 60)")
    limits.add_argument("--lockout-seconds", type=float, default=None,
                        help="how long a locked address or token stays locked (default 300)")
    ids = serve.add_argument_group("intrusion response (cloud/intrusion.py; docs/threat-model.md)")
    ids.add_argument("--intrusion", type=Path, default=None,
                     help="thresholds TOML ([detection], [dp_reports]); default: cloud/intrusion.default.toml")
    for flag, name, kind, what in (
            ("--intrusion-auth-failures", "auth_failures", int, "401s per client address in the window (10)"),
            ("--intrusion-bad-signatures", "bad_signatures", int, "bad signatures per address in the window (3)"),
            ("--intrusion-replays", "replays", int, "replayed updates per address in the window (3)"),
            ("--intrusion-denials", "denials", int, "403s of one staff user in the window before it is disabled (5)"),
            ("--intrusion-window-seconds", "window_s", float, "the detection window (60)"),
            ("--intrusion-lock-seconds", "address_lock_s", float, "how long a locked address stays locked (900)"),
            ("--intrusion-witness-max-age-s", "witness_max_age_s", float,
             "alert on updates from a participant whose last checkpoint check is older (900; 0: off)"),
            ("--intrusion-witness-max-behind", "witness_max_behind", int,
             "... or whose last checked checkpoint is this many checkpoints behind (5000; 0: off)"),
            ("--dp-noise-floor", "dp_noise_floor", float, "smallest DP-SGD noise multiplier accepted (0.5)"),
            ("--dp-noise-ceiling", "dp_noise_ceiling", float, "largest DP-SGD noise multiplier accepted (20)")):
        ids.add_argument(flag, dest=f"ids_{name}", type=kind, default=None, help=what)
    ids.add_argument("--intrusion-witness-hold", dest="ids_witness_hold", action="store_true", default=None,
                     help="also refuse (409) such updates until the participant checks a checkpoint again")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=_serve)

    user = cloud_sub.add_parser("create-user", help="create a user and print its bearer token once")
    db_flag(user)
    user.add_argument("--state-dir", type=Path, default=Path("cloud-state"))
    log_key_flags(user)
    user.add_argument("--name", required=True)
    user.add_argument("--role", required=True, choices=ROLES, help="what the user may do (docs/governance.md)")
    user.set_defaults(func=_create_user)

    gates = cloud_sub.add_parser("check-gates", help="validate a promotion gates TOML file and print it")
    gates.add_argument("--gates", type=Path, default=None, help="the file (default: the shipped defaults)")
    gates.set_defaults(func=_check_gates)

    from cloud import custody_cli, model_cli, region_admin_cli

    custody_cli.register(cloud_sub, sub)
    model_cli.register(sub)
    region_admin_cli.register(cloud_sub)



def _serve(args: argparse.Namespace) -> int:
    apply_config(args)
    import uvicorn

    from cloud.app import CloudSettings, create_app
    from federation.logs import setup_logging

    setup_logging(args.log_level, name="cloud")
    from cloud.drift import DEFAULT_MIN_READINGS, DEFAULT_MIN_REFERENCE_HOURS, DEFAULT_THRESHOLD

    settings = CloudSettings(db_url=args.db, state_dir=args.state_dir, admin_token=args.admin_token,
                             compliance_token=args.compliance_token, min_contributors=args.min_contributors,
                             warm_exporter=True,
                             dev_insecure_custodian=args.dev_insecure_custodian, epsilon_cap=args.epsilon_cap,
                             rmse_tolerance=args.rmse_tolerance, gates_file=args.gates,
                             validation_file=args.validation,
                             drift_threshold=DEFAULT_THRESHOLD if args.drift_threshold is None
                             else args.drift_threshold,
                             drift_min_readings=DEFAULT_MIN_READINGS if args.drift_min_readings is None
                             else args.drift_min_readings,
                             drift_min_reference_hours=DEFAULT_MIN_REFERENCE_HOURS
                             if args.drift_min_reference_hours is None else args.drift_min_reference_hours,
                             log_key=log_key_source(args), limits=_limits(args), intrusion=_intrusion(args),
                             **({} if args.region_audit_rate is None
                                else {"region_audit_rate": args.region_audit_rate}))
    tls = region_cli.tls_options(args.tls_cert, args.tls_key)
    # log_config=None: uvicorn's own lines go through the root logger, one JSON object per line like ours
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level, log_config=None,
                timeout_graceful_shutdown=10, **tls)
    return 0


def _intrusion(args: argparse.Namespace):  # noqa: ANN202 - cloud.intrusion.IntrusionConfig
    from cloud.intrusion_config import load_config

    flags = {k.removeprefix("ids_"): v for k, v in vars(args).items() if k.startswith("ids_")}
    return load_config(args.intrusion, **flags)  # ConfigError names the file and field (exit 2)


def _limits(args: argparse.Namespace):  # noqa: ANN202 - cloud.ratelimit.Limits
    import dataclasses

    from cloud.throttle import Limits

    given = {"requests_per_s": args.rate_limit, "burst": args.rate_burst, "auth_failures": args.auth_failures,
             "failure_window_s": args.failure_window_seconds, "summary_window_s": args.failure_summary_seconds,
             "lockout_s": args.lockout_seconds}
    for name, value in given.items():
        if value is not None and (value < 0 or (value == 0 and name != "requests_per_s")):
            raise SystemExit(f"wearfed: error: the {name} limit must be positive, got {value}")
    return dataclasses.replace(Limits(), **{k: v for k, v in given.items() if v is not None})


def _check_gates(args: argparse.Namespace) -> int:
    import json

    from cloud.gates import DEFAULT_GATES_FILE, load_gates

    cfg = load_gates(args.gates)  # ConfigError names the file and field (exit 2 via the umbrella CLI)
    print(f"OK: {args.gates or DEFAULT_GATES_FILE}\n{json.dumps(cfg.as_dict(), indent=1)}")
    return 0


def _create_user(args: argparse.Namespace) -> int:
    from cloud.access import create_user_offline
    from cloud.audit import AuditLog
    from cloud.engine import make_engine, make_sessionmaker
    from cloud.errors import CloudError

    # Offline: whoever can run this can already write the database and the state directory (the log key).
    sessions = make_sessionmaker(make_engine(args.db))
    try:
        out = create_user_offline(sessions, AuditLog.from_source(args.state_dir, log_key_source(args)), args.name,
                                  args.role)
    except CloudError as exc:
        print(f"wearfed: error: {exc.reason}", file=sys.stderr)
        return 2
    print(f"user {out.name} ({out.role}); bearer token, shown once:\n{out.token}")
    return 0
