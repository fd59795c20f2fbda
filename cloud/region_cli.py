"""`wearfed region serve`: run a region relay (`cloud.region_relay`) under uvicorn."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from federation.config import add_config_flag, apply_config


def register(sub: argparse._SubParsersAction) -> None:
    region = sub.add_parser("region", help="a region relay: sums its participants' ciphertexts for the cloud")
    region_sub = region.add_subparsers(dest="region_cmd", required=True)
    serve = region_sub.add_parser("serve", help="take participants' submissions, forward signed region aggregates")
    add_config_flag(serve)
    serve.add_argument("--id", required=True, help="the region's id (enrolled at the cloud with a token of kind "
                                                   "region)")
    serve.add_argument("--cloud", required=True, help="the cloud's base URL")
    serve.add_argument("--state-dir", type=Path, required=True,
                       help="the region's key, enrollment and acknowledged inputs")
    serve.add_argument("--enroll-token", default=os.environ.get("WEARFED_REGION_TOKEN"),
                       help="one-time enrollment token, needed at the first start (env WEARFED_REGION_TOKEN)")
    serve.add_argument("--members", default=None,
                       help="comma-separated participant ids this region takes (default: any enrolled participant "
                            "that addresses it); a batch is forwarded as soon as all have submitted")
    serve.add_argument("--flush-after", type=float, default=2.0,
                       help="forward a batch this many seconds after its oldest submission")
    serve.add_argument("--ckks-key-id", default=None, help="the federation's CKKS key id to pin (from provisioning)")
    serve.add_argument("--ca-file", type=Path, default=None, help="the cloud's CA bundle (https)")
    serve.add_argument("--tls-cert", type=Path, default=None,
                       help="serve https to the participants with this PEM certificate (chain); with --tls-key")
    serve.add_argument("--tls-key", type=Path, default=None,
                       help="its PEM private key (if encrypted: password in env WEARFED_TLS_KEY_PASSWORD)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8090)
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    apply_config(args)
    import asyncio

    import uvicorn

    from cloud.region_relay_app import create_app, preflight
    from cloud.region_relay_config import RelayConfig
    from federation.logs import setup_logging

    setup_logging(args.log_level, name="region")
    tls = tls_options(args.tls_cert, args.tls_key)
    members = None
    if args.members is not None:
        members = frozenset(m.strip() for m in args.members.split(",") if m.strip())
        if not members:
            raise SystemExit("wearfed: error: --members names no participant")
    cfg = RelayConfig(region_id=args.id, cloud_url=args.cloud, state_dir=args.state_dir,
                      enroll_token=args.enroll_token, members=members, flush_after_s=args.flush_after,
                      expected_key_id=args.ckks_key_id, ca_file=args.ca_file)
    asyncio.run(preflight(cfg))
    uvicorn.run(create_app(cfg), host=args.host, port=args.port, log_level=args.log_level, log_config=None,
                timeout_graceful_shutdown=10, **tls)
    return 0


def tls_options(cert: Path | None, key: Path | None) -> dict:
    """uvicorn's ssl options for `--tls-cert/--tls-key` of `region serve` and `cloud serve` (both or neither; files
    that exist; an encrypted key's password from env WEARFED_TLS_KEY_PASSWORD)."""
    if (cert is None) != (key is None):
        raise SystemExit("wearfed: error: --tls-cert and --tls-key go together")
    if cert is None or key is None:
        return {}
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not path.is_file():
            raise SystemExit(f"wearfed: error: {flag} {path}: no such file")
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key),
            "ssl_keyfile_password": os.environ.get("WEARFED_TLS_KEY_PASSWORD")}
