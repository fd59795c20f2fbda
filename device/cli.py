"""`wearfed device run`, `wearfed fleet run`, `wearfed profiles list|show` and `wearfed provision`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

from device.inference import DEFAULT_ALERT_CONFIDENCE
from federation.clock import DEFAULT_SIM_START, SimClock
from federation.config import add_config_flag, apply_config
from federation.errors import ConfigError

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
    p.add_argument("--privacy-rng", choices=("secure", "simulation"), default="secure",
                   help="where LDP noise comes from: the OS CSPRNG (default), or, for replays, studies and tests "
                        "only, a seed (reproducible and NOT private; labelled in status and logs)")
    p.add_argument("--seed", type=int, default=None,
                   help="simulation seed (synthetic traces, sensor ages and, with --privacy-rng simulation only, the "
                        "LDP noise); refused in secure mode, where only the synthetic trace uses seed 0")
    p.add_argument("--days", type=float, default=1.0, help="simulated days of readings to send")
    p.add_argument("--accel", type=float, default=300.0, help="simulated seconds per wall second")
    p.add_argument("--sim-start", type=float, default=DEFAULT_SIM_START, help="simulated unix time of t=0")
    p.add_argument("--wall-start", type=float, default=None, help="wall unix time of t=0 (default: now)")
    p.add_argument("--ldp-mechanism", default=None,
                   help="laplace, duchi, piecewise, hybrid, or none (default: the profile's)")
    p.add_argument("--privacy-unit", choices=("patient-day", "reading"), default=None,
                   help="what epsilon is counted in: patient-day (the profile's default: everything released in a "
                        "UTC day against one budget) or reading (event-level, labelled: each release on its own)")
    p.add_argument("--daily-budget", type=float, default=None,
                   help="epsilon per patient-day (default: the profile's, 8)")
    p.add_argument("--ldp-epsilon", type=float, default=None,
                   help="event-level option only (--privacy-unit reading): epsilon per release")
    p.add_argument("--daily-cap", type=float, default=None,
                   help="event-level option only (--privacy-unit reading): the odometer's cap per day")
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
    p.add_argument("--mqtt-keepalive", type=int, default=60,
                   help="MQTT keep-alive in seconds: a PINGREQ every half of it, a dead connection is dropped")
    p.add_argument("--mqtt-timeout", type=float, default=10.0,
                   help="seconds to wait for CONNACK, PUBACK, SUBACK and PINGRESP before reconnecting")
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
    tam.add_argument("--username", help="a principal allowed to write the model topic (the gateway's relay)")
    tam.add_argument("--password")
    tam.add_argument("--retain", action="store_true", help="replace the retained release (default: a live message)")
    tam.set_defaults(func=_tamper_release)

    wd = dev_sub.add_parser("withdraw", help="the patient withdraws consent: the device stops releasing (persisted), "
                            "drops its unsent releases and sends its gateway a signed withdrawal")
    wd.add_argument("--device-id", required=True)
    wd.add_argument("--gateway", required=True)
    wd.add_argument("--state-dir", type=Path, required=True, help="the device's state directory (as for run)")
    wd.add_argument("--credentials", type=Path, required=True,
                    help="credentials.json from `wearfed provision`: the device's login and consent key")
    wd.add_argument("--broker-host", default="127.0.0.1")
    wd.add_argument("--broker-port", type=int, default=1883)
    wd.add_argument("--ca-file", type=Path, help="connect with TLS, verifying the broker against this CA")
    wd.add_argument("--cert-file", type=Path)
    wd.add_argument("--key-file", type=Path)
    wd.add_argument("--resend", action="store_true", help="send the signed withdrawal again (already withdrawn here)")
    wd.set_defaults(func=_withdraw)

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
    prov.add_argument("--listen-host", default="127.0.0.1",
                      help="address the TLS listener binds (0.0.0.0: every interface; default loopback only)")
    prov.add_argument("--san", action="append", default=None, metavar="NAME",
                      help="host name or IP address clients use for the broker, put in the server certificate "
                           "(repeat; default: localhost and 127.0.0.1)")
    prov.add_argument("--require-client-certs", action="store_true",
                      help="the TLS listener accepts only clients presenting a certificate of the CA (mutual TLS)")
    prov.set_defaults(func=_provision)


def _withdraw(args: argparse.Namespace) -> int:
    from device.consent import drop_spooled, is_withdrawn, mark_withdrawn, publish_withdrawal
    from device.provision import load_credentials
    from device.publisher import Broker

    if not 0 < args.broker_port < 65536:
        raise ConfigError(f"--broker-port {args.broker_port} is impossible: must be in [1, 65535]")
    creds = load_credentials(args.credentials).get(args.device_id)
    if not creds or not creds.get("consent_key"):
        raise ConfigError(f"--credentials {args.credentials}: no consent key for device {args.device_id!r} "
                          "(provisioned before consent keys existed? re-run `wearfed provision`)")
    if creds.get("gateway") not in (None, args.gateway):
        raise ConfigError(f"--gateway {args.gateway}: device {args.device_id} is provisioned to {creds['gateway']}")
    if is_withdrawn(args.state_dir, args.device_id) and not args.resend:
        print(f"{args.device_id}: consent already withdrawn on this device (use --resend to notify the gateway again)")
        return 0
    mark_withdrawn(args.state_dir, args.device_id)
    dropped = drop_spooled(args.state_dir, args.device_id)
    broker = Broker(args.broker_host, args.broker_port, ca_file=args.ca_file, cert_file=args.cert_file,
                    key_file=args.key_file)
    asyncio.run(publish_withdrawal(broker, gateway=args.gateway, device_id=args.device_id,
                                   seed_b64=creds["consent_key"], username=creds["username"],
                                   password=creds["password"]))
    print(f"{args.device_id}: consent withdrawn; releases stopped, {dropped} unsent release(s) deleted, signed "
          f"withdrawal delivered to the broker for gateway {args.gateway}")
    return 0


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
    from device.provision import DEFAULT_SANS, device_ids, provision

    gws = [g for g in args.gateways.split(",") if g]
    if not gws:
        raise ConfigError(f"--gateways {args.gateways!r}: no gateway id (comma-separated, e.g. gw-1,gw-2)")
    _positive(args, "--devices-per-gateway", integer=True)  # -2 would write a bundle without any device
    done = provision(args.out, gateways={g: device_ids(g, args.devices_per_gateway) for g in gws},
                     client_certs=args.client_certs, tls_port=args.tls_port, listen_host=args.listen_host,
                     sans=tuple(args.san or DEFAULT_SANS), require_client_certs=args.require_client_certs)
    print(f"wrote {done.passwd}, {done.acl}, {done.credentials} (secret), {done.ca_cert}, {done.server_cert}, "
          f"{done.conf}")
    return 0


def _positive(args: argparse.Namespace, *flags: str, integer: bool = False, allow_zero: bool = False) -> None:
    for flag in flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is None:
            continue
        ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
        if not ok or (integer and int(value) != value):
            kind = "an integer" if integer else "a finite number"
            raise ConfigError(f"{flag} {value!r} is impossible: must be {kind} {'>=' if allow_zero else '>'} 0")


def check_flags(args: argparse.Namespace) -> None:
    """Numeric flags and profile overrides, checked before any device starts (ConfigError/ProfileError: exit 2)."""
    from device.profiles import apply_overrides, load_profile

    if args.seed is not None and args.privacy_rng != "simulation":
        raise ConfigError("--seed would make the privacy noise reproducible: a device refuses it unless asked for "
                          "the named simulation mode (--privacy-rng simulation; not private, labelled)")
    _positive(args, "--days", "--accel", "--connect-rate")
    _positive(args, "--odometer-block", "--devices-per-gateway", "--workers", integer=True)
    _positive(args, "--sensor-age", allow_zero=True)
    if not 0 < args.broker_port < 65536:
        raise ConfigError(f"--broker-port {args.broker_port} is impossible: must be in [1, 65535]")
    apply_overrides(load_profile(args.profile), batch_size=args.batch_size, ldp_mechanism=args.ldp_mechanism,
                    epsilon_per_reading=args.ldp_epsilon, daily_cap=args.daily_cap, privacy_unit=args.privacy_unit,
                    epsilon_per_patient_day=args.daily_budget)


def _setup(args: argparse.Namespace):  # noqa: ANN202
    apply_config(args)
    from device.profiles import load_profile
    from device.publisher import Broker
    from federation.logs import setup_logging

    check_flags(args)
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
    cfg = DeviceConfig(device_id=args.device_id, gateway=args.gateway, seed=args.seed or 0, days=args.days,
                       profile=profile, ldp_mechanism=args.ldp_mechanism, ldp_epsilon=args.ldp_epsilon,
                       daily_cap=args.daily_cap, batch_size=args.batch_size, sensor_age_s=args.sensor_age,
                       odometer_block=args.odometer_block, trace_file=args.traces,
                       username=c.get("username"), password=c.get("password"),
                       release_key=_release_key(args.release_key), alert_confidence=args.alert_confidence,
                       linger=args.linger, mqtt_keepalive_s=args.mqtt_keepalive, mqtt_timeout_s=args.mqtt_timeout,
                       privacy_rng=args.privacy_rng, privacy_unit=args.privacy_unit, daily_budget=args.daily_budget)
    stats = asyncio.run(run_fleet([cfg], clock, broker, state_dir=state_dir, status_path=args.status_file))
    return 1 if any(s.errors for s in stats.values()) else 0


def _run_fleet(args: argparse.Namespace) -> int:
    from device.fleet import fleet_configs, run_fleet, run_shards

    if args.workers > 1 and args.shard is None:
        apply_config(args)
        check_flags(args)  # once, before any shard starts
        state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="wearfed-fleet-"))
        return run_shards(sys.argv[1:], workers=args.workers, state_dir=state_dir,
                          wall_start=args.wall_start or time.time(), status_path=args.status_file)
    clock, broker, profile, state_dir, creds = _setup(args)
    configs = fleet_configs(gateways=[g for g in args.gateways.split(",") if g],
                            devices_per_gateway=args.devices_per_gateway, seed=args.seed or 0, days=args.days,
                            profile=profile, ldp_mechanism=args.ldp_mechanism, ldp_epsilon=args.ldp_epsilon,
                            daily_cap=args.daily_cap, batch_size=args.batch_size, credentials=creds,
                            odometer_block=args.odometer_block, random_sensor_age=args.stagger_sensors,
                            trace_file=args.traces, release_key=_release_key(args.release_key),
                            alert_confidence=args.alert_confidence, linger=args.linger,
                            mqtt_keepalive_s=args.mqtt_keepalive, mqtt_timeout_s=args.mqtt_timeout,
                            privacy_rng=args.privacy_rng, privacy_unit=args.privacy_unit,
                            daily_budget=args.daily_budget)
    if args.shard is not None:
        configs = configs[args.shard::args.workers]
    stats = asyncio.run(run_fleet(configs, clock, broker, state_dir=state_dir, status_path=args.status_file,
                                  connect_rate=args.connect_rate))
    return 1 if any(s.errors for s in stats.values()) else 0
