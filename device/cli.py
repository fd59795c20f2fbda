"""`wearfed device run`, `wearfed fleet run`, `wearfed profiles list|show` and `wearfed provision`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

from device.inference import DEFAULT_ALERT_CONFIDENCE
from federation.clock import DEFAULT_SIM_START, SimClock
from federation.config import add_config_flag, apply_config

log = logging.getLogger(__name__)


def _common(p: argparse.ArgumentParser) -> None:
    add_config_flag(p)
    p.add_argument("--profile", default="dexcom-g7", help="firmware profile name or TOML path (wearfed profiles list)")
    p.add_argument("--state-dir", type=Path, help="spool and privacy odometers; reuse it to resume after a restart "
                                                  "(default: a fresh temporary directory)")
    p.add_argument("--broker-host", default="127.0.0.1")
    p.add_argument("--broker-port", type=int, default=1883)
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--credentials", type=Path, help="credentials.json from `wearfed provision` (per-device logins)")
    p.add_argument("--ca-file", type=Path, help="connect with TLS, verifying the broker against this CA")
    p.add_argument("--cert-file", type=Path, help="client certificate (mutual TLS)")
    p.add_argument("--key-file", type=Path, help="client private key (mutual TLS)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--days", type=float, default=1.0, help="simulated days of readings to send")
    p.add_argument("--accel", type=float, default=300.0, help="simulated seconds per wall second")
    p.add_argument("--sim-start", type=float, default=DEFAULT_SIM_START, help="simulated unix time of t=0")
    p.add_argument("--wall-start", type=float, default=None, help="wall unix time of t=0 (default: now)")
    p.add_argument("--ldp-mechanism", default=None,
                   help="laplace, duchi, piecewise, hybrid, or none (default: the profile's)")
    p.add_argument("--ldp-epsilon", type=float, default=None, help="epsilon per reading (default: the profile's)")
    p.add_argument("--daily-cap", type=float, default=None, help="privacy odometer's daily cap (default: profile's)")
    p.add_argument("--batch-size", type=int, default=None, help="max readings per publish (default: profile's)")
    p.add_argument("--odometer-block", type=int, default=12,
                   help="readings charged to the privacy odometer per durable write, ahead of use (conservative)")
    p.add_argument("--connect-rate", type=float, default=200.0, help="devices started per wall second")
    p.add_argument("--status-file", type=Path, help="write counters here as JSON, atomically")
    p.add_argument("--traces", type=Path, help="replay CGM traces from this .npz (written by sim) instead of "
                   "the built-in synthetic generator")
    p.add_argument("--release-key", help="the cloud's release public key (base64 Ed25519, GET /v1/release-key), or "
                   "a file holding it; devices whose profile runs the forecaster verify model releases with it")
    p.add_argument("--alert-confidence", type=float, default=DEFAULT_ALERT_CONFIDENCE,
                   help="clinician-set threshold in (0, 1]: forecast alerts with a lower confidence are flagged "
                        f"for review instead (default {DEFAULT_ALERT_CONFIDENCE}; see docs/release.md)")
    p.add_argument("--linger", action="store_true",
                   help="forecaster devices (hubs) stay connected after their trace, receiving model releases and "
                        "reporting status, until SIGTERM")


def register(sub: argparse._SubParsersAction) -> None:
    dev = sub.add_parser("device", help="one simulated CGM device")
    dev_sub = dev.add_subparsers(dest="device_cmd", required=True)
    run = dev_sub.add_parser("run", help="run one device until its trace ends")
    _common(run)
    run.add_argument("--device-id", required=True)
    run.add_argument("--gateway", required=True, help="gateway id this device reports to")
    run.add_argument("--sensor-age", type=float, default=None,
                     help="seconds the sensor has been worn at sim start (default: just warmed up)")
    run.set_defaults(func=_run_device)
    tam = dev_sub.add_parser("tamper-release", help="demo/test: publish a tampered copy of the gateway's retained "
                             "model release (devices must refuse it; see device/tamper.py)")
    tam.add_argument("--gateway", required=True)
    tam.add_argument("--kind", default="bit-flip", help="bit-flip, unsigned, forged, oversized or garbage")
    tam.add_argument("--broker-host", default="127.0.0.1")
    tam.add_argument("--broker-port", type=int, default=1883)
    tam.add_argument("--username", help="a principal allowed to write the model topic (the gateway's)")
    tam.add_argument("--password")
    tam.add_argument("--retain", action="store_true", help="replace the retained release (default: a live message)")
    tam.set_defaults(func=_tamper_release)

    fleet = sub.add_parser("fleet", help="many simulated devices in one process")
    fleet_sub = fleet.add_subparsers(dest="fleet_cmd", required=True)
    frun = fleet_sub.add_parser("run", help="run a fleet until every trace ends")
    _common(frun)
    frun.add_argument("--gateways", required=True, help="comma-separated gateway ids")
    frun.add_argument("--devices-per-gateway", type=int, default=10)
    frun.add_argument("--stagger-sensors", action="store_true",
                      help="draw each sensor's age from the seed (sensor changes and warm-up gaps spread over the "
                           "fleet); default: every sensor just warmed up at sim start")
    frun.add_argument("--workers", type=int, default=1,
                      help="processes to shard the devices over (each one asyncio loop; use one per core)")
    frun.add_argument("--shard", type=int, default=None, help=argparse.SUPPRESS)
    frun.set_defaults(func=_run_fleet)

    prof = sub.add_parser("profiles", help="firmware profiles of the simulated devices")
    prof_sub = prof.add_subparsers(dest="profiles_cmd", required=True)
    plist = prof_sub.add_parser("list", help="one line per profile")
    plist.add_argument("--dir", type=Path, help="profile directory (default: firmware_profiles/)")
    plist.set_defaults(func=_profiles_list)
    pshow = prof_sub.add_parser("show", help="explain one profile")
    pshow.add_argument("name", help="profile name or TOML path")
    pshow.add_argument("--dir", type=Path)
    pshow.set_defaults(func=_profiles_show)

    prov = sub.add_parser("provision", help="broker password file, ACL, device credentials, TLS certificates")
    prov.add_argument("--out", type=Path, required=True)
    prov.add_argument("--gateways", required=True, help="comma-separated gateway ids")
    prov.add_argument("--devices-per-gateway", type=int, default=10)
    prov.add_argument("--client-certs", action="store_true", help="also issue one client certificate per principal")
    prov.add_argument("--tls-port", type=int, default=8883, help="TLS listener port written into mosquitto-auth.conf")
    prov.set_defaults(func=_provision)


def _tamper_release(args: argparse.Namespace) -> int:
    from device.tamper import publish_payload, read_retained, tamper

    auth = {"username": args.username, "password": args.password}
    good = read_retained(host=args.broker_host, port=args.broker_port, gateway=args.gateway, **auth)
    publish_payload(tamper(good, args.kind), host=args.broker_host, port=args.broker_port, gateway=args.gateway,
                    retain=args.retain, **auth)
    print(f"published a {args.kind} copy of the retained release on wearfed/v1/{args.gateway}/model")
    return 0


def _profiles_list(args: argparse.Namespace) -> int:
    from device.profiles import list_profiles

    for p in list_profiles(args.dir):
        print(f"{p.name:12s} {p.kind:6s} every {p.sample_interval_s:4d} s  {p.session_s / 86400:4g} d  "
              f"store {p.store_capacity_readings:6d}  {p.ldp_mechanism} eps={p.epsilon_per_reading:g} "
              f"cap={p.daily_cap:g}/day  {p.description}")
    return 0


def _profiles_show(args: argparse.Namespace) -> int:
    from device.profiles import load_profile

    p = load_profile(args.name, directory=args.dir)
    width = max(len(k) for k, _ in p.explain())
    for k, v in p.explain():
        print(f"{k:>{width}s}: {v}")
    return 0


def _provision(args: argparse.Namespace) -> int:
    from device.provision import device_ids, provision

    gws = [g for g in args.gateways.split(",") if g]
    done = provision(args.out, gateways={g: device_ids(g, args.devices_per_gateway) for g in gws},
                     client_certs=args.client_certs, tls_port=args.tls_port)
    print(f"wrote {done.passwd}, {done.acl}, {done.credentials} (secret), {done.ca_cert}, {done.server_cert}, "
          f"{done.conf}")
    return 0


def _setup(args: argparse.Namespace):  # noqa: ANN202
    apply_config(args)
    from device.profiles import load_profile
    from device.publisher import Broker
    from federation.logs import setup_logging

    setup_logging("info", name="device")
    clock = SimClock(sim_start=args.sim_start, wall_start=args.wall_start or time.time(), accel=args.accel)
    broker = Broker(args.broker_host, args.broker_port, args.username, args.password, ca_file=args.ca_file,
                    cert_file=args.cert_file, key_file=args.key_file)
    profile = load_profile(args.profile)
    state_dir = args.state_dir
    if state_dir is None:
        state_dir = Path(tempfile.mkdtemp(prefix="wearfed-device-"))
        log.warning("no --state-dir: spool and odometers in %s will not be reused after a restart", state_dir)
    creds = None
    if args.credentials:
        from device.provision import load_credentials

        creds = load_credentials(args.credentials)
    return clock, broker, profile, state_dir, creds


def _release_key(value: str | None) -> str | None:
    """The key itself, or the content of the file named by `value`."""
    if value and Path(value).is_file():
        return Path(value).read_text().strip()
    return value


def _run_device(args: argparse.Namespace) -> int:
    from device.fleet import run_fleet
    from device.publisher import DeviceConfig

    clock, broker, profile, state_dir, creds = _setup(args)
    c = (creds or {}).get(args.device_id, {})
    cfg = DeviceConfig(device_id=args.device_id, gateway=args.gateway, seed=args.seed, days=args.days,
                       profile=profile, ldp_mechanism=args.ldp_mechanism, ldp_epsilon=args.ldp_epsilon,
                       daily_cap=args.daily_cap, batch_size=args.batch_size, sensor_age_s=args.sensor_age,
                       odometer_block=args.odometer_block, trace_file=args.traces,
                       username=c.get("username"), password=c.get("password"),
                       release_key=_release_key(args.release_key), alert_confidence=args.alert_confidence,
                       linger=args.linger)
    stats = asyncio.run(run_fleet([cfg], clock, broker, state_dir=state_dir, status_path=args.status_file))
    return 1 if any(s.errors for s in stats.values()) else 0


def _run_fleet(args: argparse.Namespace) -> int:
    from device.fleet import fleet_configs, run_fleet, run_shards

    if args.workers > 1 and args.shard is None:
        apply_config(args)
        state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="wearfed-fleet-"))
        return run_shards(sys.argv[1:], workers=args.workers, state_dir=state_dir,
                          wall_start=args.wall_start or time.time(), status_path=args.status_file)
    clock, broker, profile, state_dir, creds = _setup(args)
    configs = fleet_configs(gateways=[g for g in args.gateways.split(",") if g],
                            devices_per_gateway=args.devices_per_gateway, seed=args.seed, days=args.days,
                            profile=profile, ldp_mechanism=args.ldp_mechanism, ldp_epsilon=args.ldp_epsilon,
                            daily_cap=args.daily_cap, batch_size=args.batch_size, credentials=creds,
                            odometer_block=args.odometer_block, random_sensor_age=args.stagger_sensors,
                            trace_file=args.traces, release_key=_release_key(args.release_key),
                            alert_confidence=args.alert_confidence, linger=args.linger)
    if args.shard is not None:
        configs = configs[args.shard::args.workers]
    stats = asyncio.run(run_fleet(configs, clock, broker, state_dir=state_dir, status_path=args.status_file,
                                  connect_rate=args.connect_rate))
    return 1 if any(s.errors for s in stats.values()) else 0
