"""`wearfed cloud ...` (serve, create-user, init-keys, unseal, check-gates), `wearfed audit verify`; registers
`wearfed model ...` (cloud/model_cli.py)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from federation.config import add_config_flag, apply_config

DEFAULT_DB = "sqlite:///cloud.db"


def register(sub: argparse._SubParsersAction) -> None:
    cloud = sub.add_parser("cloud", help="the cloud aggregator")
    cloud_sub = cloud.add_subparsers(dest="cloud_cmd", required=True)
    serve = cloud_sub.add_parser("serve", help="serve the federation API (FastAPI under uvicorn)")
    add_config_flag(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    _db_flag(serve)
    serve.add_argument("--state-dir", type=Path, default=Path("cloud-state"))
    serve.add_argument("--admin-token", default=os.environ.get("WEARFED_ADMIN_TOKEN"),
                       help="bootstraps the user 'admin' with this bearer token on first start "
                            "(env WEARFED_ADMIN_TOKEN)")
    serve.add_argument("--epsilon-cap", type=float, default=None,
                       help="global per-participant cumulative epsilon cap (per window, at the declared delta)")
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
    serve.add_argument("--dev-insecure-custodian", action="store_true",
                       help="INSECURE: keep the CKKS secret key unsealed on this host (demos and tests only)")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=_serve)

    user = cloud_sub.add_parser("create-user", help="create a user and print its bearer token once")
    _db_flag(user)
    user.add_argument("--state-dir", type=Path, default=Path("cloud-state"))
    user.add_argument("--name", required=True)
    user.add_argument("--role", required=True)
    user.set_defaults(func=_create_user)

    keys = cloud_sub.add_parser("init-keys", help="create the CKKS keys, seal the secret k-of-n, print the shares")
    keys.add_argument("--state-dir", type=Path, default=Path("cloud-state"))
    keys.add_argument("--custodians", type=int, required=True)
    keys.add_argument("--threshold", type=int, required=True)
    keys.set_defaults(func=_init_keys)

    unseal = cloud_sub.add_parser("unseal", help="send custodians' shares to a running server, one at a time")
    unseal.add_argument("--url", default="http://127.0.0.1:8080")
    unseal.add_argument("--token", default=os.environ.get("WEARFED_TOKEN"),
                        help="bearer token of an admin or compliance officer (env WEARFED_TOKEN)")
    unseal.add_argument("--shares-file", type=Path, default=None,
                        help="read shares from this file (one per line) instead of prompting")
    unseal.set_defaults(func=_unseal)

    gates = cloud_sub.add_parser("check-gates", help="validate a promotion gates TOML file and print it")
    gates.add_argument("--gates", type=Path, default=None, help="the file (default: the shipped defaults)")
    gates.set_defaults(func=_check_gates)

    from cloud import model_cli

    model_cli.register(sub)

    audit = sub.add_parser("audit", help="the cloud's audit ledger")
    audit_sub = audit.add_subparsers(dest="audit_cmd", required=True)
    verify = audit_sub.add_parser("verify", help="recompute the Merkle tree and check every signed checkpoint")
    _db_flag(verify)
    verify.add_argument("--log-key", default=None,
                        help="the log's Ed25519 public key (base64), pinned out of band; default: the key "
                             "recorded in the database (weaker: a warning is printed)")
    verify.add_argument("--checkpoint", type=Path, default=None,
                        help="a checkpoint saved earlier (JSON of GET /v1/audit/checkpoint): the ledger must "
                             "still contain its tree (detects truncation)")
    verify.set_defaults(func=_verify)


def _db_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=os.environ.get("WEARFED_DB_URL", DEFAULT_DB),
                   help="SQLAlchemy URL (env WEARFED_DB_URL); SQLite file by default")


def _serve(args: argparse.Namespace) -> int:
    apply_config(args)
    import uvicorn

    from cloud.app import CloudSettings, create_app
    from federation.logs import setup_logging

    setup_logging(args.log_level, name="cloud")
    from cloud.drift import DEFAULT_MIN_READINGS, DEFAULT_MIN_REFERENCE_HOURS, DEFAULT_THRESHOLD

    settings = CloudSettings(db_url=args.db, state_dir=args.state_dir, admin_token=args.admin_token,
                             warm_exporter=True,
                             dev_insecure_custodian=args.dev_insecure_custodian, epsilon_cap=args.epsilon_cap,
                             rmse_tolerance=args.rmse_tolerance, gates_file=args.gates,
                             validation_file=args.validation,
                             drift_threshold=DEFAULT_THRESHOLD if args.drift_threshold is None
                             else args.drift_threshold,
                             drift_min_readings=DEFAULT_MIN_READINGS if args.drift_min_readings is None
                             else args.drift_min_readings,
                             drift_min_reference_hours=DEFAULT_MIN_REFERENCE_HOURS
                             if args.drift_min_reference_hours is None else args.drift_min_reference_hours)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=10)
    return 0


def _check_gates(args: argparse.Namespace) -> int:
    import json

    from cloud.gates import DEFAULT_GATES_FILE, load_gates

    cfg = load_gates(args.gates)  # ConfigError names the file and field (exit 2 via the umbrella CLI)
    print(f"OK: {args.gates or DEFAULT_GATES_FILE}\n{json.dumps(cfg.as_dict(), indent=1)}")
    return 0


def _create_user(args: argparse.Namespace) -> int:
    from cloud.audit import AuditLog
    from cloud.db import make_engine, make_sessionmaker
    from cloud.errors import CloudError
    from cloud.service import create_user_offline

    # Offline: whoever can run this can already write the database and the state directory (the log key).
    sessions = make_sessionmaker(make_engine(args.db))
    try:
        out = create_user_offline(sessions, AuditLog.from_state_dir(args.state_dir), args.name, args.role)
    except CloudError as exc:
        print(f"wearfed: error: {exc.reason}", file=sys.stderr)
        return 2
    print(f"user {out['name']} ({out['role']}); bearer token, shown once:\n{out['token']}")
    return 0


def _init_keys(args: argparse.Namespace) -> int:
    from cloud.custody import CustodyError, init_keys

    try:
        shares = init_keys(args.state_dir, custodians=args.custodians, threshold=args.threshold)
    except CustodyError as exc:
        print(f"wearfed: error: {exc}", file=sys.stderr)
        return 2
    print(f"public context published and secret context sealed under {args.state_dir / 'custody'}; "
          f"any {args.threshold} of these {args.custodians} shares unseal it. Each is shown ONCE: hand one to "
          "each custodian and keep no copy here.")
    for share in shares:
        print(share)
    return 0


def _unseal(args: argparse.Namespace) -> int:
    import httpx

    if not args.token:
        raise SystemExit("--token (or WEARFED_TOKEN) is required")
    if args.shares_file is not None:
        shares = [line.strip() for line in args.shares_file.read_text().splitlines() if line.strip()]
    else:
        shares = []
        while True:
            s = getpass.getpass("custodian share (empty line to stop): ").strip()
            if not s:
                break
            shares.append(s)
    headers = {"Authorization": f"Bearer {args.token}"}
    status: dict = {}
    with httpx.Client(base_url=args.url, headers=headers, timeout=60) as http:
        for share in shares:
            resp = http.post("/v1/custodian/unseal", json={"share": share})
            if resp.status_code >= 400:
                print(f"wearfed: share refused ({resp.status_code}): {resp.json().get('detail')}", file=sys.stderr)
                return 2
            status = resp.json()
            if status.get("state") == "unsealed":
                break
    print(f"custodian: {status}")
    return 0 if status.get("state") == "unsealed" else 1


def _verify(args: argparse.Namespace) -> int:
    import json

    from cloud.audit import LedgerTampered, verify_ledger, verify_witness
    from cloud.db import make_engine, make_sessionmaker

    sessions = make_sessionmaker(make_engine(args.db))
    try:
        if args.checkpoint is not None:
            report = verify_witness(sessions, json.loads(args.checkpoint.read_text()), public_key=args.log_key)
        else:
            report = verify_ledger(sessions, public_key=args.log_key)
    except LedgerTampered as exc:
        print(f"FAIL: {exc}")
        return 1
    for w in report.warnings:
        print(f"warning: {w}")
    print(f"OK: {report.entries} entries, {report.checkpoints} signed checkpoints verified; root "
          f"{report.root_hex}; log key {report.public_key}")
    return 0
