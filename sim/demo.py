"""`wearfed demo`: one whole federation on loopback, real processes, on an accelerated simulated clock.

Broker (Mosquitto, or embedded amqtt), cloud aggregator (uvicorn, INSECURE dev custodian), N gateways each
fed by a fleet of simulated CGM devices with local DP, and hospital nodes on local clinical data. Rounds
open on the simulated clock; after each, the new model is scored on held-out virtual patients.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

from device.sensor import synthetic_trace
from federation.clock import DEFAULT_SIM_START, SimClock
from gateway.hospital import write_clinical_csv
from sim.broker import free_port, start_broker, wait_for_port
from sim.evaluate import EvalSet, evaluate, heldout_set
from sim.processes import ProcessGroup, read_json, wait_until
from sim.report import RoundPrinter


@dataclass(frozen=True)
class DemoConfig:
    out: Path
    scenario: str = "demo"
    seed: int = 7
    gateways: int = 3
    devices_per_gateway: int = 10
    hospitals: int = 1
    hospital_patients: int = 10
    hospital_days: float = 2.0
    days: float = 1.0
    accel: float = 3600.0
    rounds: int = 3
    local_epochs: int = 2
    ldp_mechanism: str = "hybrid"
    ldp_epsilon: float | None = 8.0
    noise_multiplier: float = 1.0
    epsilon_cap: float = 10.0
    heldout_patients: int = 10
    broker: str = "auto"
    round_deadline_s: float = 180.0


def _cutoffs(cfg: DemoConfig) -> list[float]:
    """Round k trains on data up to k/rounds of the simulated span."""
    span = cfg.days * 86400
    return [DEFAULT_SIM_START + span * k / cfg.rounds for k in range(1, cfg.rounds + 1)]


def _write_hospital_data(cfg: DemoConfig, hospital: str, path: Path) -> None:
    series = {}
    for k in range(1, cfg.hospital_patients + 1):
        patient = f"{hospital}-p{k:03d}"
        times, _bg, cgm = synthetic_trace(seed=cfg.seed, patient=patient,
                                          start=DEFAULT_SIM_START - int(cfg.hospital_days * 86400),
                                          days=cfg.hospital_days)
        series[patient] = (times, cgm)
    write_clinical_csv(path, series)


RUN_MARKER = ".wearfed-run"


def prepare_run_dir(path: Path) -> Path:
    """A fresh run directory; an earlier run's directory (it has the marker) is wiped, anything else refused."""
    out = path.resolve()
    if out.exists() and any(out.iterdir()):
        if not (out / RUN_MARKER).exists():
            raise FileExistsError(f"{out} is not empty and was not written by wearfed; refusing to overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_MARKER).write_text("written by wearfed; the next run in this directory replaces it\n")
    return out


def run_demo(cfg: DemoConfig) -> dict:
    t_start = time.time()
    out = prepare_run_dir(cfg.out)
    printer = RoundPrinter()
    admin_token = secrets.token_urlsafe(24)
    env = {"WEARFED_ADMIN_TOKEN": admin_token}
    gateways = [f"gw-{i}" for i in range(1, cfg.gateways + 1)]
    hospitals = [f"hosp-{i}" for i in range(1, cfg.hospitals + 1)]
    participants = gateways + hospitals
    group = ProcessGroup(out / "logs")
    broker = start_broker(out / "broker", prefer=cfg.broker)
    printer.note(f"broker: {broker.kind} on 127.0.0.1:{broker.port}")
    heldout = heldout_set(seed=cfg.seed + 1_000, patients=cfg.heldout_patients, days=2.0, start=DEFAULT_SIM_START)
    try:
        cloud_port = free_port()
        cloud_url = f"http://127.0.0.1:{cloud_port}"
        group.start("cloud", ["cloud", "serve", "--port", str(cloud_port), "--db", f"sqlite:///{out / 'cloud.db'}",
                              "--state-dir", str(out / "cloud"), "--dev-insecure-custodian",
                              "--epsilon-cap", str(cfg.epsilon_cap), "--log-level", "warning"], env=env)
        wait_for_port("127.0.0.1", cloud_port, timeout=60)
        health = httpx.get(f"{cloud_url}/healthz").json()
        printer.warn(f"cloud: {cloud_url} — custodian {health['custodian']}: {health['warning']}")
        staff = _bootstrap_staff(cloud_url, admin_token)
        admin = staff["admin"]
        enroll_env = {}
        for pid in participants:  # one one-time provisioning token per participant, bound to its id
            resp = admin.post("/v1/enrollment-tokens", json={"participant_id": pid})
            resp.raise_for_status()
            enroll_env[pid] = {"WEARFED_ENROLL_TOKEN": resp.json()["token"]}
        dp_flags = ["--noise-multiplier", str(cfg.noise_multiplier), "--epsilon-cap", str(cfg.epsilon_cap),
                    "--seed", str(cfg.seed), "--cloud-url", cloud_url, "--log-level", "warning"]
        for gw in gateways:
            group.start(gw, ["gateway", "run", "--id", gw, "--state-dir", str(out / gw), "--broker-port",
                             str(broker.port), *dp_flags], env=enroll_env[gw])
        for h in hospitals:
            (out / h).mkdir(exist_ok=True)
            _write_hospital_data(cfg, h, out / h / "clinical.csv")
            group.start(h, ["hospital", "run", "--id", h, "--state-dir", str(out / h), "--data",
                            str(out / h / "clinical.csv"), *dp_flags], env=enroll_env[h])

        def enrolled() -> bool:
            group.check_alive()
            return len(admin.get("/v1/participants").json()) == len(participants)

        wait_until(enrolled, timeout=120, what="every participant to enroll")
        printer.note(f"enrolled: {', '.join(participants)}")

        clock = SimClock(sim_start=DEFAULT_SIM_START, wall_start=time.time() + 2.0, accel=cfg.accel)
        ldp = ["--ldp-mechanism", cfg.ldp_mechanism] + (
            ["--ldp-epsilon", str(cfg.ldp_epsilon)] if cfg.ldp_epsilon is not None else [])
        group.start("fleet", ["fleet", "run", "--gateways", ",".join(gateways), "--devices-per-gateway",
                              str(cfg.devices_per_gateway), "--broker-port", str(broker.port), "--seed",
                              str(cfg.seed), "--days", str(cfg.days), "--accel", str(cfg.accel), "--sim-start",
                              str(clock.sim_start), "--wall-start", str(clock.wall_start), "--status-file",
                              str(out / "fleet-status.json"), *ldp], finite=True)
        total_readings = cfg.gateways * cfg.devices_per_gateway * int(round(cfg.days * 86400 / 300))
        rounds = []
        with printer.streaming(total_readings) as progress:
            for k, cutoff in enumerate(_cutoffs(cfg), start=1):
                while clock.now() < cutoff + 600:  # ten simulated minutes of slack for in-flight readings
                    group.check_alive()
                    progress(read_json(out / "fleet-status.json").get("published", 0), clock.now())
                    time.sleep(0.2)
                rounds.append(_run_round(staff, cfg, k, cutoff, heldout, group, progress, clock, out))
                printer.round_table(rounds[-1])
        readings = _drain_and_count(cfg, out, gateways, group)
        printer.readings(readings)
    finally:
        group.stop_all()
        broker.stop()
    summary = {"scenario": cfg.scenario, "rounds": rounds, "readings": readings,
               "broker": broker.kind, "custodian": "insecure-dev-unsealed",
               "heldout": {"patients": heldout.patients, "windows": len(heldout.x)},
               "wall_seconds": round(time.time() - t_start, 1),
               "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    printer.note(f"summary: {out / 'summary.json'}  cloud database: {out / 'cloud.db'}  "
                 f"wall time {summary['wall_seconds']} s")
    return summary


STAFF_ROLES = ("operator", "data_scientist", "compliance_officer")


def _bootstrap_staff(cloud_url: str, admin_token: str) -> dict[str, httpx.Client]:
    """The bootstrap admin creates one user per role the demo acts in (separate users: segregation of duties)."""
    def client(token: str) -> httpx.Client:
        return httpx.Client(base_url=cloud_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    staff = {"admin": client(admin_token)}
    for role in STAFF_ROLES:
        resp = staff["admin"].post("/v1/users", json={"name": f"demo-{role.replace('_', '-')}", "role": role})
        resp.raise_for_status()
        staff[role] = client(resp.json()["token"])
    return staff


def _run_round(staff: dict[str, httpx.Client], cfg: DemoConfig, k: int, cutoff: float, heldout: EvalSet,
               group: ProcessGroup, progress, clock: SimClock, out: Path) -> dict:  # noqa: ANN001
    t0 = time.time()
    admin = staff["admin"]
    resp = staff["operator"].post("/v1/rounds", json={"quorum": 2, "deadline_s": cfg.round_deadline_s,
                                                      "data_cutoff": cutoff, "local_epochs": cfg.local_epochs})
    resp.raise_for_status()
    round_id = resp.json()["round"]

    def closed() -> bool:
        group.check_alive()
        progress(read_json(out / "fleet-status.json").get("published", 0), clock.now())
        return admin.get(f"/v1/rounds/{round_id}").json()["state"] in ("completed", "failed")

    wait_until(closed, timeout=cfg.round_deadline_s + 30, what=f"round {round_id} to close")
    report = admin.get(f"/v1/rounds/{round_id}").json()
    row = {"round": round_id, "state": report["state"], "participants": [u["participant"] for u in report["updates"]],
           "refusals": report["refusals"], "model_version": report["result_model_version"],
           "failure_reason": report["failure_reason"]}
    if report["state"] == "completed":
        m = admin.get(f"/v1/models/{report['result_model_version']}").json()
        weights = np.frombuffer(base64.b64decode(m["weights"]), dtype=np.float32)
        scores = evaluate(weights, heldout)
        row.update({k2: round(v, 2) for k2, v in scores.items()})
        row["model_hash"] = m["hash"]
        # held-out metrics posted by a data scientist, approved by compliance, promoted by the admin
        # (the operator opened the round, so it may not promote it)
        staff["data_scientist"].post(f"/v1/rounds/{round_id}/metrics",
                                     json={"metrics": {k2: float(v) for k2, v in scores.items()}}).raise_for_status()
        approval = staff["compliance_officer"].post(f"/v1/rounds/{round_id}/approve")
        if approval.status_code == 200:
            admin.post(f"/v1/rounds/{round_id}/promote").raise_for_status()
        row["model_status"] = admin.get(f"/v1/models/{report['result_model_version']}").json()["status"]
    row["epsilon"] = {u["participant"]: {"value": round(u["dp"]["epsilon_cumulative"], 4),
                                         "round_value": round(u["dp"]["epsilon_round"], 4),
                                         "delta": u["dp"]["delta"], "unit": u["dp"]["unit"],
                                         "accountant": u["dp"]["accountant"]} for u in report["updates"]}
    row["windows"] = {u["participant"]: u["n_samples"] for u in report["updates"]}
    row["bytes_up"] = sum(u["bytes"] for u in report["updates"])
    row["seconds"] = round(time.time() - t0, 2)
    return row


def _drain_and_count(cfg: DemoConfig, out: Path, gateways: list[str], group: ProcessGroup) -> dict:
    """Wait for the fleet to finish and every acknowledged reading to land in a gateway's store."""
    fleet = group.procs["fleet"]
    fleet.wait(timeout=120)
    published = read_json(out / "fleet-status.json").get("published", 0)

    def ingested() -> int:
        return sum(read_json(out / gw / "status.json").get("ingested", 0) for gw in gateways)

    with contextlib.suppress(TimeoutError):  # what never arrives is counted as lost below
        wait_until(lambda: ingested() >= published, timeout=30, what="gateways to ingest every reading")
    time.sleep(1.2)  # one more status tick
    stats = [read_json(out / gw / "status.json") for gw in gateways]
    total_ing = sum(s.get("ingested", 0) for s in stats)
    return {"published": published, "ingested": total_ing,
            "duplicates": sum(s.get("duplicates", 0) for s in stats),
            "rejected": sum(s.get("rejected", 0) for s in stats),
            "lost": max(0, published - total_ing), "fleet_exit_code": fleet.returncode}
