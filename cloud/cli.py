"""`wearfed cloud ...`: run the aggregator under uvicorn."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from federation.config import add_config_flag, apply_config


def register(sub: argparse._SubParsersAction) -> None:
    cloud = sub.add_parser("cloud", help="the cloud aggregator")
    cloud_sub = cloud.add_subparsers(dest="cloud_cmd", required=True)
    serve = cloud_sub.add_parser("serve", help="serve the federation API (FastAPI under uvicorn)")
    add_config_flag(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--db", default=os.environ.get("WEARFED_DB_URL", "sqlite:///cloud.db"),
                       help="SQLAlchemy URL (env WEARFED_DB_URL); SQLite file by default")
    serve.add_argument("--state-dir", type=Path, default=Path("cloud-state"))
    serve.add_argument("--admin-token", default=os.environ.get("WEARFED_ADMIN_TOKEN"))
    serve.add_argument("--enroll-token", default=os.environ.get("WEARFED_ENROLL_TOKEN"))
    serve.add_argument("--dev-insecure-custodian", action="store_true",
                       help="INSECURE: keep the CKKS secret key unsealed on this host (demos and tests only)")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    apply_config(args)
    import uvicorn

    from cloud.app import CloudSettings, create_app
    from federation.logs import setup_logging

    setup_logging(args.log_level, name="cloud")
    for flag in ("admin_token", "enroll_token"):
        if not getattr(args, flag):
            raise SystemExit(f"--{flag.replace('_', '-')} (or its WEARFED_ env variable) is required")
    settings = CloudSettings(db_url=args.db, state_dir=args.state_dir, admin_token=args.admin_token,
                             enroll_token=args.enroll_token, dev_insecure_custodian=args.dev_insecure_custodian)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=10)
    return 0
