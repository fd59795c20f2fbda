"""The commands that handle the federation's keys and its ledger: `wearfed cloud init-keys` (CKKS keys sealed k-of-n),
`cloud unseal` (custodians' shares to a running server), `cloud init-log-key` (the audit log's key outside the
state directory) and `wearfed audit verify`; plus the database and log-key flags `cloud serve` shares."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

DEFAULT_DB = "sqlite:///cloud.db"
PASSPHRASE_ENV = "WEARFED_LOG_KEY_PASSPHRASE"
MIN_PASSPHRASE = 12


def register(cloud_sub: argparse._SubParsersAction, sub: argparse._SubParsersAction) -> None:
    log_key = cloud_sub.add_parser("init-log-key", help="create the audit log's signing key as a passphrase-encrypted "
                                                        "PEM file outside the state directory; prints its public key")
    log_key.add_argument("--out", type=Path, required=True, help="the key file to write (mode 0600; not replaced)")
    log_key.add_argument("--from", dest="from_key", type=Path, default=None,
                         help="encrypt this existing key instead of making a new one (e.g. the state directory's "
                              "audit-log-key.pem, which a running deployment is pinned to; delete it afterwards)")
    log_key.add_argument("--log-key-passphrase-file", type=Path, default=None,
                         help=f"read the passphrase from this file (default: env {PASSPHRASE_ENV})")
    log_key.set_defaults(func=_init_log_key)

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
    unseal.add_argument("--ca-file", type=Path, default=None,
                        help="PEM CA bundle the cloud's https certificate is checked against (default: system CAs)")
    unseal.set_defaults(func=_unseal)

    audit = sub.add_parser("audit", help="the cloud's audit ledger")
    audit_sub = audit.add_subparsers(dest="audit_cmd", required=True)
    verify = audit_sub.add_parser("verify", help="recompute the Merkle tree and check every signed checkpoint")
    db_flag(verify)
    verify.add_argument("--log-key", default=None,
                        help="the log's Ed25519 public key (base64), pinned out of band; default: the key "
                             "recorded in the database (weaker: a warning is printed)")
    verify.add_argument("--checkpoint", type=Path, default=None,
                        help="a checkpoint saved earlier (JSON of GET /v1/audit/checkpoint): the ledger must "
                             "still contain its tree (detects truncation)")
    verify.set_defaults(func=_verify)


def log_key_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("audit log key (default: <state-dir>/audit-log-key.pem, unencrypted)")
    g.add_argument("--log-key-file", type=Path, default=None,
                   help="the log-signing key, a PEM file outside the state directory (`wearfed cloud init-log-key`); "
                        f"encrypted ones need a passphrase: env {PASSPHRASE_ENV} or --log-key-passphrase-file")
    g.add_argument("--log-key-passphrase-file", type=Path, default=None, help="read the key's passphrase from here")
    g.add_argument("--log-signer", default=None,
                   help="an external signer command (HSM/KMS client): message on stdin, base64 Ed25519 signature on "
                        "stdout; needs --log-public-key")
    g.add_argument("--log-public-key", default=None, help="the external signer's public key (base64), pinned")


def _passphrase(args: argparse.Namespace) -> bytes | None:
    if getattr(args, "log_key_passphrase_file", None) is not None:
        text = args.log_key_passphrase_file.read_text().rstrip("\n")
    else:
        text = os.environ.get(PASSPHRASE_ENV)
    return text.encode() if text else None


def log_key_source(args: argparse.Namespace):  # noqa: ANN202 - cloud.audit.LogKeySource
    from cloud.audit import LogKeySource

    if args.log_key_file is not None and args.log_signer is not None:
        raise SystemExit("wearfed: error: --log-key-file and --log-signer are exclusive")
    if args.log_signer is not None and not args.log_public_key:
        raise SystemExit("wearfed: error: --log-signer needs --log-public-key (the signer's base64 public key)")
    return LogKeySource(file=args.log_key_file, passphrase=_passphrase(args), command=args.log_signer,
                        public_key=args.log_public_key)


def _init_log_key(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from federation.errors import SignatureError
    from federation.signing import load_private_key, public_key_b64, write_private_key

    passphrase = _passphrase(args)
    if passphrase is None or len(passphrase) < MIN_PASSPHRASE:
        print(f"wearfed: error: a passphrase of at least {MIN_PASSPHRASE} characters is required (env "
              f"{PASSPHRASE_ENV} or --log-key-passphrase-file)", file=sys.stderr)
        return 2
    if args.out.exists():
        print(f"wearfed: error: {args.out} exists; refusing to replace a log key", file=sys.stderr)
        return 2
    try:
        key = load_private_key(args.from_key) if args.from_key else Ed25519PrivateKey.generate()
    except SignatureError as exc:
        print(f"wearfed: error: {exc}", file=sys.stderr)
        return 2
    write_private_key(args.out, key, passphrase=passphrase)
    print(f"log key written to {args.out} (encrypted); public key (pin it: `audit verify --log-key`, nodes' "
          f"--log-key):\n{public_key_b64(key)}")
    return 0


def db_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=os.environ.get("WEARFED_DB_URL", DEFAULT_DB),
                   help="SQLAlchemy URL (env WEARFED_DB_URL); SQLite file by default")


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
        shares = _read_shares()
    if not shares:
        raise SystemExit("no share given (one custodian share per line, an empty line or end of input to stop)")
    headers = {"Authorization": f"Bearer {args.token}"}
    status: dict = {}
    from federation.responses import refusal_detail
    from federation.tls import tls_context

    with httpx.Client(base_url=args.url, headers=headers, timeout=60, verify=tls_context(args.ca_file)) as http:
        for share in shares:
            resp = http.post("/v1/custodian/unseal", json={"share": share})
            if resp.status_code >= 400:
                print(f"wearfed: error: share refused ({resp.status_code}): {refusal_detail(resp)}", file=sys.stderr)
                return 2
            status = resp.json()
            if status.get("state") == "unsealed":
                break
    print(f"custodian: {status}")
    if status.get("state") != "unsealed":  # accepted and waiting for more custodians: not an error
        print(f"share(s) accepted; the key unseals once {status.get('threshold', 'enough')} custodians have sent "
              f"theirs ({status.get('shares_received', '?')} so far)")
    return 0


def existing_database(url: str, flag: str = "--db") -> str:
    """`url` if it names a database that exists: a bare path or a SQLite file that is not there is refused (reading
    commands must not create an empty database and then report on it)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from federation.errors import ConfigError

    if "://" not in url:
        raise ConfigError(f"{flag} {url!r} is not a database URL; for a SQLite file write sqlite:///{url}")
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"{flag} {url!r}: {exc}. A relative SQLite file is sqlite:///cloud.db (three slashes), "
                          "an absolute one sqlite:////srv/cloud.db (four)") from exc
    if parsed.get_backend_name() == "sqlite":
        if parsed.host:
            raise ConfigError(f"{flag} {url!r}: {parsed.host!r} stands where a host goes; a relative SQLite file is "
                              f"sqlite:///{parsed.host} (three slashes), absolute sqlite:////srv/cloud.db (four)")
        path = parsed.database
        if not path or path == ":memory:":
            raise ConfigError(f"{flag} {url!r} names no file (an in-memory database holds no ledger)")
        if not Path(path).is_file():
            raise ConfigError(f"{flag} {url}: no database file {Path(path).resolve()} (this command reads an "
                              "existing ledger and creates none; the cloud's is where `cloud serve --db` points)")
    return url


def _read_shares() -> list[str]:
    """Shares typed at a terminal (not echoed) or piped in, one per line, until an empty line or end of input."""
    shares = []
    while True:
        try:
            if sys.stdin.isatty():
                s = getpass.getpass("custodian share (empty line to stop): ").strip()
            else:
                s = sys.stdin.readline()
                if not s:
                    break
                s = s.strip()
        except EOFError:
            break
        if not s:
            break
        shares.append(s)
    return shares


def _verify(args: argparse.Namespace) -> int:
    import json

    from cloud.audit import LedgerTampered, verify_ledger, verify_witness
    from cloud.engine import make_engine, make_sessionmaker

    sessions = make_sessionmaker(make_engine(existing_database(args.db)))
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
