"""`wearfed gateway run`, `wearfed hospital run`, `wearfed hospital pool` and `wearfed export fhir`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
from pathlib import Path

from federation.config import add_config_flag, apply_config
from federation.errors import ConfigError
from federation.windows import APPLY_TO, SMOOTHERS

DATA_HELP = ("CSV, header patient,time,glucose,insulin,carbs (any order; optional unit column). time: ISO 8601 with a "
             "UTC offset (2026-01-01T08:05:00Z), unix seconds or unix milliseconds, detected from the first row. "
             "glucose: mg/dL; for mmol/L name the column glucose_mmol or add unit=mmol/L (converted x 18.016). "
             "insulin: units delivered, carbs: grams announced (may be empty). Readings are resampled onto the "
             "5-min grid (neighbours up to 7.5 min apart interpolated; longer spans are gaps). Check a file first "
             "with `wearfed hospital check --data FILE` (docs/gateway.md)")


def _node_flags(p: argparse.ArgumentParser, *, kind: str) -> None:
    add_config_flag(p)
    example = "gw-1" if kind == "gateway" else "hosp-1"
    p.add_argument("--id", required=True, help=f"this {kind}'s participant id (e.g. {example})")
    p.add_argument("--state-dir", type=Path, required=True, help="keys, node state, local database")
    p.add_argument("--enroll-token", default=os.environ.get("WEARFED_ENROLL_TOKEN"))
    _training_flags(p)


def _training_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cloud-url", default="http://127.0.0.1:8080")
    p.add_argument("--ca-file", type=Path, default=os.environ.get("WEARFED_CA_FILE"),
                   help="PEM CA bundle the cloud's https certificate is checked against (env WEARFED_CA_FILE; "
                        "default: the system's CAs)")
    p.add_argument("--log-key", default=os.environ.get("WEARFED_LOG_KEY"),
                   help="the cloud's audit log key (base64 Ed25519, env WEARFED_LOG_KEY), pinned by the log witness; "
                        "default: trusted on first use")
    p.add_argument("--ckks-key-id", default=os.environ.get("WEARFED_CKKS_KEY_ID"),
                   help="the federation's CKKS key id from provisioning (env WEARFED_CKKS_KEY_ID): enrollment "
                        "refuses a cloud that binds another key (default: pin what the enrollment answer binds)")
    p.add_argument("--region", default=None,
                   help="send updates through this region relay (its id; with --region-url), which sums them with "
                        "its other participants' (docs/scale.md); default: straight to the cloud")
    p.add_argument("--region-url", default=None, help="the region relay's base URL")
    p.add_argument("--privacy-rng", choices=("secure", "simulation"), default="secure",
                   help="DP-SGD noise and sampling: the OS CSPRNG, or seeded SIMULATION mode (replays; not private)")
    p.add_argument("--seed", type=int, help="simulation mode only: seed of the DP-SGD noise and sampling")
    p.add_argument("--dp-unit", choices=("patient", "window"), default="patient",
                   help="unit of DP-SGD privacy: patient (user-level, default) or window (record-level, labelled)")
    p.add_argument("--noise-multiplier", type=float, default=1.0, help="DP-SGD Gaussian noise multiplier")
    p.add_argument("--max-grad-norm", type=float, default=1.0,
                   help="DP-SGD clipping norm (of each patient's gradient; of each window's with --dp-unit window)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="expected patients (or windows with --dp-unit window) per step (Poisson sampling)")
    p.add_argument("--windows-per-patient", type=int, default=32,
                   help="at most this many of a sampled patient's windows per step")
    p.add_argument("--hypo-weight", type=float, default=1.0,
                   help="loss weight of windows whose +30 min target is below 80 mg/dL (1: plain MSE)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--accountant", choices=("prv", "rdp"), default="prv")
    p.add_argument("--epsilon-cap", type=float, default=10.0,
                   help="cumulative epsilon cap per patient (per window with --dp-unit window)")
    p.add_argument("--log-level", default="info")


def _ingest_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker-host", default="127.0.0.1")
    p.add_argument("--broker-port", type=int, default=1883)
    p.add_argument("--username", help="the ingest's MQTT login (gateway-<id> from `wearfed provision`)")
    p.add_argument("--password")
    p.add_argument("--relay-username", help="the model relay's own MQTT login (gateway-<id>-relay); never the "
                                            "ingest's, whose persistent session it would take over")
    p.add_argument("--relay-password")
    p.add_argument("--credentials", type=Path,
                   help="credentials.json from `wearfed provision`: the ingest and relay logins of this gateway")
    p.add_argument("--broker-ca-file", type=Path, help="connect to the broker over TLS, verifying it against this CA")
    p.add_argument("--broker-cert-file", type=Path, help="the ingest's client certificate (mutual TLS)")
    p.add_argument("--broker-key-file", type=Path, help="the ingest's client private key")
    p.add_argument("--relay-cert-file", type=Path, help="the relay's client certificate (mutual TLS)")
    p.add_argument("--relay-key-file", type=Path, help="the relay's client private key")
    p.add_argument("--devices-file", type=Path,
                   help="device registry, one id per line (default: <state-dir>/devices.txt if present)")
    p.add_argument("--max-future-s", type=float,
                   help="reject readings stamped further than this past the wall clock (default 30 days)")
    p.add_argument("--stuck-after-s", type=float, default=None,
                   help="status.json says healthy: false once the store has failed this long without a success "
                        "(default 30)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on http://<metrics-host>:PORT/metrics (0: a free port, written to "
                        "<state-dir>/metrics.json); off by default")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address the metrics server binds (default loopback)")
    p.add_argument("--consent-keys", type=Path,
                   help="devices' consent public keys, '<device> <base64 key>' per line (consent-keys-<gw>.txt from "
                        "`wearfed provision`; default: <state-dir>/consent-keys.txt if present)")
    p.add_argument("--retention-days", type=float, default=30.0,
                   help="delete readings and quarantined messages received longer ago than this (default 30)")
    p.add_argument("--retention-interval-s", type=float, default=3600.0,
                   help="how often the retention period is enforced (default 3600 s)")
    ids = p.add_argument_group("intrusion response beside the broker (gateway/acl_watch.py; docs/threat-model.md)")
    ids.add_argument("--broker-log", type=Path,
                     help="Mosquitto's log file (log_dest file, with log_type debug): a burst of ACL denials by one "
                          "device revokes its broker login and alerts the cloud; off without it")
    ids.add_argument("--broker-passwd-file", type=Path,
                     help="the broker's password file, where a contained device's login is commented out")
    ids.add_argument("--broker-pid-file", type=Path,
                     help="the broker's pid file (mosquitto.conf pid_file): SIGHUP after a revocation")
    ids.add_argument("--acl-denials", type=int, default=5,
                     help="ACL denials of one device within --acl-window-s that contain it (default 5)")
    ids.add_argument("--acl-window-s", type=float, default=60.0, help="the ACL denial window (default 60 s)")
    pool = p.add_argument_group("gateway pool (docs/scale.md): several processes share one device population")
    pool.add_argument("--pool-group", help="join the MQTT 5 shared subscription $share/GROUP/... (needs --store-url)")
    pool.add_argument("--pool-member", help="this member's stable name in the pool (client id gateway-<id>-<member>)")
    pool.add_argument("--store-url", help="the pool's shared PostgreSQL reading store "
                                          "(postgresql+psycopg2://user@host/db)")


def _logins(args: argparse.Namespace) -> dict[str, str | None]:
    """Ingest and relay logins: explicit flags win over the provisioned credentials file."""
    out: dict[str, str | None] = {"username": args.username, "password": args.password,
                                  "relay_username": args.relay_username, "relay_password": args.relay_password}
    if args.credentials is None:
        return out
    try:
        principals = json.loads(args.credentials.read_text())["principals"]
        found = {p.get("role"): p for p in principals.values() if p.get("gateway") == args.id}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"--credentials {args.credentials}: cannot read the provisioned logins: {exc}") from exc
    for role, prefix in (("gateway", ""), ("relay", "relay_")):
        if role not in found:
            raise ConfigError(f"--credentials {args.credentials}: no {role} principal for gateway {args.id!r}")
        for key in ("username", "password"):
            out[prefix + key] = out[prefix + key] or found[role][key]
    return out


def _existing(flag: str, path: Path | None) -> Path | None:
    if path is not None and not path.is_file():
        raise ConfigError(f"{flag} {path}: no such file")
    return path


def _acl_watch(args: argparse.Namespace):  # noqa: ANN202 - gateway.acl_watch.AclWatchConfig | None
    from gateway.acl_watch import AclWatchConfig

    if args.broker_log is None:
        if args.broker_passwd_file or args.broker_pid_file:
            raise ConfigError("--broker-passwd-file and --broker-pid-file need --broker-log (the log to watch)")
        return None
    return AclWatchConfig(log_file=args.broker_log, denials=args.acl_denials, window_s=args.acl_window_s,
                          passwd_file=_existing("--broker-passwd-file", args.broker_passwd_file),
                          pid_file=args.broker_pid_file)


def _ingest_config(args: argparse.Namespace):  # noqa: ANN202
    from gateway.consent import RetentionConfig
    from gateway.daemon import IngestConfig
    from gateway.ingest import DEFAULT_MAX_FUTURE_S, STUCK_AFTER_S

    flags = {"ca_file": "broker_ca_file", "cert_file": "broker_cert_file", "key_file": "broker_key_file",
             "relay_cert_file": "relay_cert_file", "relay_key_file": "relay_key_file"}
    tls = {k: _existing(f"--{dest.replace('_', '-')}", getattr(args, dest)) for k, dest in flags.items()}
    if tls["ca_file"] is None and any(tls.values()):
        raise ConfigError("a client certificate needs TLS: give --broker-ca-file too")
    if not 0 < args.broker_port < 65536:
        raise ConfigError(f"--broker-port {args.broker_port} is impossible: must be in [1, 65535]")
    if args.metrics_port is not None and not 0 <= args.metrics_port < 65536:
        raise ConfigError(f"--metrics-port {args.metrics_port} is impossible: must be in [0, 65535]")
    pool = (args.pool_group, args.pool_member, args.store_url)
    if any(pool) and not all(pool):
        raise ConfigError("a gateway pool needs --pool-group, --pool-member and --store-url together")
    for flag, value in (("--pool-group", args.pool_group), ("--pool-member", args.pool_member)):
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
            raise ConfigError(f"{flag} {value!r}: letters, digits, '-' and '_' only (at most 64)")
    if args.store_url is not None and not args.store_url.startswith("postgresql"):
        raise ConfigError(f"--store-url {args.store_url!r}: must be a postgresql:// URL")
    return IngestConfig(broker_host=args.broker_host, pool_group=args.pool_group, pool_member=args.pool_member,
                        store_url=args.store_url, broker_port=args.broker_port, **_logins(args), **tls,
                        devices_file=args.devices_file,
                        max_future_s=DEFAULT_MAX_FUTURE_S if args.max_future_s is None else args.max_future_s,
                        release_key=getattr(args, "release_key", None),
                        stuck_after_s=STUCK_AFTER_S if args.stuck_after_s is None else args.stuck_after_s,
                        metrics_port=args.metrics_port, metrics_host=args.metrics_host,
                        consent_keys=_existing("--consent-keys", args.consent_keys),
                        retention=RetentionConfig(days=args.retention_days, interval_s=args.retention_interval_s),
                        acl_watch=_acl_watch(args))


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

    exp = sub.add_parser("export", help="export data for other systems")
    exp_sub = exp.add_subparsers(dest="export_cmd", required=True)
    fhir = exp_sub.add_parser("fhir", help="a patient's CGM readings, forecasts and alerts as an HL7 FHIR R4 Bundle "
                              "(HL7 CGM IG: LOINC 99504-3, mg/dL)")
    fhir.add_argument("--readings", type=Path, required=True,
                      help="clinical CSV: patient,time,glucose,insulin,carbs (the hospital node's --data format)")
    fhir.add_argument("--patient", required=True, help="the patient id in that file")
    fhir.add_argument("--forecasts", type=Path, help="CSV patient,time,horizon_min,glucose (optional)")
    fhir.add_argument("--alerts", type=Path, help="CSV patient,time,kind,horizon_min,confidence (optional)")
    fhir.add_argument("--bundle-type", choices=("collection", "transaction"), default="collection")
    fhir.add_argument("--out", type=Path, required=True, help="where to write the Bundle (JSON)")
    fhir.set_defaults(func=_export_fhir)

    hosp = sub.add_parser("hospital", help="a hospital node training on local clinical data")
    hosp_sub = hosp.add_subparsers(dest="hospital_cmd", required=True)
    hrun = hosp_sub.add_parser("run", help="take part in rounds until SIGTERM")
    _node_flags(hrun, kind="hospital")
    hrun.add_argument("--data", type=Path, required=True, help=DATA_HELP)
    hrun.add_argument("--eval-holdout-patients", type=int, default=0,
                      help="keep the last K patients out of training and score every candidate model on them "
                           "(federated evaluation: only the scores are sent, signed)")
    hrun.set_defaults(func=_run_hospital)
    hcheck = hosp_sub.add_parser("check", help="check a hospital data file without enrolling (no token, no cloud): "
                                               "patients, readings, resampling, gaps, training windows",
                                 description=DATA_HELP)
    hcheck.add_argument("--data", type=Path, required=True, help="the CSV file")
    hcheck.set_defaults(func=_check_hospital)
    hwd = hosp_sub.add_parser("withdraw", help="patients withdraw consent: excluded from every later round and from "
                              "the node's derived data; reported to the cloud's audit ledger (counts only)")
    hwd.add_argument("--state-dir", type=Path, required=True, help="the hospital node's state directory")
    hwd.add_argument("--data", type=Path, required=True, help="the node's clinical CSV (to count what is excluded)")
    who = hwd.add_mutually_exclusive_group(required=True)
    who.add_argument("--patient", help="one patient id")
    who.add_argument("--patients-file", type=Path, help="a file of withdrawn patient ids, one per line")
    hwd.set_defaults(func=_hospital_withdraw)
    pool = hosp_sub.add_parser("pool", help="many hospital participants in one process (large federations)")
    add_config_flag(pool)
    pool.add_argument("--spec", type=Path, required=True,
                      help="JSON {nodes: [{id, data, state_dir, enroll_token}]}; paths relative to the file")
    pool.add_argument("--training-slots", type=int, default=1, help="nodes that may train at the same time")
    pool.add_argument("--ray", metavar="auto|ADDRESS", default=None,
                      help="train each node's rounds as Ray tasks: 'auto' joins a running cluster or starts a local "
                           "one, or a cluster address; the training windows go to the cluster (keep it inside the "
                           "hospitals' trust boundary; needs the 'scale' extra; docs/scale.md)")
    _training_flags(pool)
    pool.set_defaults(func=_run_pool)


def _node_config(args: argparse.Namespace, kind: str):  # noqa: ANN202
    apply_config(args)
    from federation.logs import setup_logging
    from gateway.node import NodeConfig

    setup_logging(args.log_level, name=f"{kind}:{args.id}")
    if not args.enroll_token and not (args.state_dir / "enrolled.json").exists():  # a restart needs no token
        raise ConfigError(f"--enroll-token (or WEARFED_ENROLL_TOKEN) is required: {args.state_dir} holds no "
                          "enrollment yet (a one-time token from the cloud admin, docs/cloud.md)")
    return NodeConfig(participant_id=args.id, kind=kind, cloud_url=args.cloud_url, state_dir=args.state_dir,
                      enroll_token=args.enroll_token or "", dp=_dp_config(args), **_rng_config(args),
                      ca_file=Path(args.ca_file) if args.ca_file else None, log_key=args.log_key,
                      expected_key_id=args.ckks_key_id, region=args.region, region_url=args.region_url)


def _rng_config(args: argparse.Namespace) -> dict:
    """privacy_rng and seed for NodeConfig; a seed without the named simulation mode is refused."""
    if args.seed is not None and args.privacy_rng != "simulation":
        raise ConfigError("--seed makes DP-SGD noise reproducible by whoever knows it: it is accepted only with "
                         "--privacy-rng simulation (replays and studies; not private)")
    if args.privacy_rng == "simulation" and args.seed is None:
        raise ConfigError("--privacy-rng simulation needs --seed")
    return {"privacy_rng": args.privacy_rng, "seed": args.seed}


def _dp_config(args: argparse.Namespace):  # noqa: ANN202
    import torch

    from gateway.trainer import DPConfig

    torch.set_num_threads(1)  # several nodes share a small machine; one core each
    return DPConfig(noise_multiplier=args.noise_multiplier, max_grad_norm=args.max_grad_norm,
                    expected_batch_size=args.batch_size, lr=args.lr, delta=args.delta, accountant=args.accountant,
                    epsilon_cap=args.epsilon_cap, unit=args.dp_unit, windows_per_patient=args.windows_per_patient,
                    hypo_weight=args.hypo_weight)


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


def _check_hospital(args: argparse.Namespace) -> int:
    from gateway.hospital import check_clinical_data

    for line in check_clinical_data(args.data).lines(args.data):  # SchemaError names file, line, field: exit 2
        print(line)
    print("OK: this file can train")
    return 0


def _export_fhir(args: argparse.Namespace) -> int:
    from federation.runtime import atomic_write_json
    from gateway.fhir_export import export_patient

    bundle = export_patient(args.readings, args.patient, forecasts_csv=args.forecasts, alerts_csv=args.alerts,
                            bundle_type=args.bundle_type)
    atomic_write_json(args.out, bundle, indent=1)
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    print(f"{args.out}: FHIR R4 {args.bundle_type} Bundle for patient {args.patient}: {len(kinds) - 1} "
          f"Observation(s) and 1 Patient")
    return 0


def _hospital_withdraw(args: argparse.Namespace) -> int:
    from gateway.hospital import load_clinical_csv
    from gateway.hospital_consent import HospitalConsent, read_ids

    if not args.data.is_file():
        raise ConfigError(f"--data {args.data}: no such file")
    ids = [args.patient] if args.patient else read_ids(args.patients_file)
    if not ids:
        raise ConfigError(f"--patients-file {args.patients_file}: no patient ids in it")
    out = HospitalConsent(args.state_dir).withdraw(ids, load_clinical_csv(args.data))
    print(f"{out['withdrawn']} patient(s) withdrawn ({out['already']} already, {out['not_in_data']} not in "
          f"{args.data}); a running node rebuilds its windows without them within a second")
    return 0


def _run_hospital(args: argparse.Namespace) -> int:
    from gateway.hospital import check_clinical_data, run_hospital

    apply_config(args)
    cfg = _node_config(args, "hospital")  # bad flags first (a seed outside simulation mode, ...)
    check_clinical_data(args.data)  # then bad data, before torch loads and before enrolling
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
                          enroll_token="", dp=_dp_config(args), **_rng_config(args),
                          ca_file=Path(args.ca_file) if args.ca_file else None, log_key=args.log_key,
                          expected_key_id=args.ckks_key_id, region=args.region, region_url=args.region_url)
    spec = load_pool_spec(args.spec)  # a bad spec fails before Ray starts
    trainer = None
    if args.ray:
        import logging

        from sim.executors import RayExecutor

        trainer = RayExecutor(args.ray)
        logging.getLogger("gateway.pool").info("pool trains on %s, %d at a time", trainer.name, args.training_slots)
    try:
        nodes = build_nodes(spec, template, trainer=trainer)
        asyncio.run(run_pool(nodes, training_slots=args.training_slots))
    finally:
        if trainer is not None:
            trainer.close()
    return 0
