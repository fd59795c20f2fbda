"""`wearfed replay SCENARIO --out DIR`: a scenario's whole federation as real processes on loopback.

Broker (Mosquitto, or embedded amqtt), cloud aggregator (uvicorn), one gateway daemon per gateway, one
hospital daemon per hospital and one fleet process for every device, on one simulated clock. Gateways reach
the broker and the cloud through relays the replay can cut (network partitions). Rounds open as simulated
time passes; each new model is scored on held-out virtual patients; timed faults are injected; the run
ends with `summary.json` and a self-contained `report.html`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import numpy as np

from device.traces import write_traces
from federation.clock import DEFAULT_SIM_START, SimClock
from federation.privacy_rng import SIMULATION_LABEL
from federation.responses import Evaluations, ModelView, ReleaseKey, Response, RoundReport, RoundView
from federation.status import GatewayStatus
from federation.wire import DPReport
from gateway.hospital import write_clinical_csv
from sim.broker import RunningBroker, free_port, start_broker, wait_for_port
from sim.evaluate import HeldOut, clarke_points, evaluate, heldout_set
from sim.faults import FAULT_ACTIONS
from sim.netproxy import TcpRelay
from sim.patients import training_patients
from sim.privacy_summary import describe as describe_privacy
from sim.privacy_summary import summary as privacy_summary
from sim.processes import ProcessGroup, read_json, read_status, wait_until
from sim.report import RoundPrinter
from sim.report_explanations import fetch as fetch_explanations
from sim.run_facts import device_privacy, promotion_gates, run_parameters
from sim.scenario import Fault, Scenario
from sim.summary import write_summary
from sim.wrist import check_release_path, device_states, inference_gateways

R = TypeVar("R", bound=Response)

RUN_MARKER = ".wearfed-run"
VALIDATION_SEED_OFFSET = 4242  # the validation cohort's seed, away from the held-out set's and the trainers'
STAFF_ROLES = ("operator", "data_scientist", "compliance_officer")
VIEWER = "replay-viewer"  # the dashboard's read-only user (auditor) the replay prints a token for


def forecaster_summary() -> dict:
    """What the nodes train: the architecture and its inputs (the features gateways and hospitals compute)."""
    from federation import features, model

    return {"architecture": model.ARCHITECTURE, "parameters": model.N_PARAMS,
            "inputs": [f"glucose: the last {model.HISTORY_STEPS} readings (2 h on the 5-min grid)",
                       *features.FEATURE_NAMES],
            "insulin_curve": f"exponential, peak {features.INSULIN_PEAK_MIN:g} min, duration "
                             f"{features.INSULIN_DURATION_MIN:g} min (OpenAPS/Loop)",
            "carb_absorption": f"Hovorka 2004, t_max {features.CARB_TMAX_MIN:g} min",
            "dp_sgd_unit": "patient (user-level: patient-level sampling, per-patient clipping)",
            "dp_sgd_randomness": f"nodes run --privacy-rng simulation (replays reproduce by seed): {SIMULATION_LABEL}"}


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


def device_ids(s: Scenario) -> dict[str, list[str]]:
    return {g.id: [f"{g.id}-dev{k:03d}" for k in range(1, g.devices + 1)] for g in s.gateways}


def write_patient_data(s: Scenario, out: Path) -> tuple[Path | None, dict[str, Path]]:
    """Device traces (one .npz for the fleet) and each hospital's clinical CSV, from the scenario's cohort.

    Devices wear the first patients of the training cohort, hospitals the next ones; sensor drift faults are
    applied to the targeted gateway's devices from their start hour. A federation without devices gets no traces.
    """
    ids = [d for devs in device_ids(s).values() for d in devs]
    traces = out / "device-traces.npz" if ids else None
    if ids:
        _write_device_traces(s, ids, traces)
    csvs, offset = {}, len(ids)
    for h in s.hospitals:
        (out / h.id).mkdir(exist_ok=True)
        csvs[h.id] = out / h.id / "clinical.csv"
        if h.data is not None:  # real data (`wearfed import`), copied so the run directory is complete
            shutil.copyfile(h.data, csvs[h.id])
            continue
        start = DEFAULT_SIM_START - int(h.days * 86400)  # historical clinical data, before the replay starts
        hp = training_patients(s.cohort.source, h.patients, days=h.days, seed=s.scenario.seed, start=start,
                               sensor=s.cohort.sensor, offset=offset)
        offset += h.patients
        write_clinical_csv(csvs[h.id], {p.name: p.series() for p in hp})  # CGM, insulin and announced carbs
    return traces, csvs


def _write_device_traces(s: Scenario, ids: list[str], traces: Path) -> None:
    """Glucose for every device; with the UVA/Padova cohort also the insulin delivered and carbs announced in each
    step (the same simulation as `training_patients`, whose traces drop them), which hubs release too (issue 15)."""
    treatments: dict[str, np.ndarray] = {}
    if s.cohort.source == "uva-padova":
        from datetime import UTC, datetime

        from sim.cohort import make_cohort, simulate

        sim = simulate(make_cohort(len(ids), seed=s.scenario.seed).take(range(len(ids))), days=s.scenario.days,
                       seed=s.scenario.seed, sensor=s.cohort.sensor,
                       start=datetime.fromtimestamp(DEFAULT_SIM_START, UTC).replace(tzinfo=None))
        offsets = sim.minutes.astype(np.int64) * 60
        cgm = np.asarray(sim.cgm, dtype=np.float64)
        treatments = {"insulin": np.asarray(sim.insulin, dtype=np.float64),
                      "carbs": np.asarray(sim.carbs, dtype=np.float64)}
    else:
        pats = training_patients(s.cohort.source, len(ids), days=s.scenario.days, seed=s.scenario.seed,
                                 start=DEFAULT_SIM_START, sensor=s.cohort.sensor)
        offsets = pats[0].times - DEFAULT_SIM_START
        cgm = np.vstack([p.cgm for p in pats]).astype(np.float64)
    for f in s.faults:
        if f.kind == "sensor_drift":
            rows = [i for i, d in enumerate(ids) if f.target in (None, d, d.rsplit("-dev", 1)[0])]
            days_in = np.clip((offsets - f.at_hours * 3600) / 86400, 0, None)
            cgm[rows] = np.clip(cgm[rows] + (f.drift_mgdl_per_day or 10.0) * days_in, 40, 400)
    write_traces(traces, ids, offsets, cgm, **treatments)


def write_validation_set(s: Scenario, out: Path) -> Path:
    """The cloud's synthetic validation cohort: virtual patients no node trains on and the report does not score."""
    from federation.evaluation import AGE_GROUPS, save_validation_set

    seed = s.scenario.seed + VALIDATION_SEED_OFFSET
    val = heldout_set(source=s.cohort.source, patients=s.cohort.heldout_patients, days=s.cohort.heldout_days,
                      seed=seed, sensor=s.cohort.sensor)
    path = out / "validation.npz"
    # age groups only where the cohort has them (UVA/Padova); the synthetic generator's patients have none
    groups = val.groups if val.groups is not None and set(val.groups) <= set(AGE_GROUPS) else None
    save_validation_set(path, val.x, val.y_cgm, meta={"source": s.cohort.source, "seed": seed}, groups=groups)
    return path


@dataclass
class Replay:
    s: Scenario
    out: Path
    broker_pref: str = "auto"
    printer: RoundPrinter = field(default_factory=RoundPrinter)
    group: ProcessGroup | None = None
    broker: RunningBroker | None = None
    relays: dict[str, dict[str, TcpRelay]] = field(default_factory=dict)
    staff: dict[str, httpx.Client] = field(default_factory=dict)
    fault_log: list[dict] = field(default_factory=list)
    fleet_timeline: list[dict] = field(default_factory=list)
    clock: SimClock | None = None
    pool_processes: int = 0  # > 0: hospitals run as nodes inside this many `hospital pool` processes
    regions: int = 0  # > 0: hospitals send their updates through this many region relays (dealt round-robin)
    ray_address: str | None = None  # pools train their nodes as Ray tasks on this cluster (sim.executors)
    last_weights: np.ndarray | None = None  # the newest model a round produced (the report's Clarke grid)
    last_model: dict = field(default_factory=dict)  # that model's version and round (labels the grids)
    lingering: set[str] = field(default_factory=set)  # gateways whose hub fleets stay up for the release checks

    # -- start-up ------------------------------------------------------------------------------------
    def start(self) -> None:
        s, out = self.s, self.out
        self.group = ProcessGroup(out / "logs")
        if s.gateways:  # a hospitals-only federation needs no broker
            self.broker = start_broker(out / "broker", prefer=self.broker_pref)
            self.printer.note(f"broker: {self.broker.kind} on 127.0.0.1:{self.broker.port}")
        self.traces, csvs = write_patient_data(s, out)
        self.printer.note(f"cohort: {s.cohort.source} ({s.cohort.sensor}), {sum(g.devices for g in s.gateways)} "
                          f"device wearers, {sum(h.patients or 0 for h in s.hospitals)} simulated hospital patients"
                          + "".join(f", {h.id} on {h.data}" for h in s.hospitals if h.data))
        admin_token = secrets.token_urlsafe(24)
        self.cloud_port = free_port()
        self.cloud_url = f"http://127.0.0.1:{self.cloud_port}"
        self.cloud_args = ["cloud", "serve", "--port", str(self.cloud_port), "--db",
                           f"sqlite:///{out / 'cloud.db'}", "--state-dir", str(out / "cloud"),
                           "--dev-insecure-custodian", "--epsilon-cap", str(s.privacy.participant_epsilon_cap),
                           "--log-level", "warning"]
        self.cloud_args += ["--validation", str(write_validation_set(s, out))]
        compliance_token = secrets.token_urlsafe(24)  # the second person of the two-person rules
        self.cloud_env = {"WEARFED_ADMIN_TOKEN": admin_token, "WEARFED_COMPLIANCE_TOKEN": compliance_token}
        # TFLite releases only where a device runs the model: no export competing for the CPU otherwise
        self.cloud_env["WEARFED_TFLITE_EXPORT"] = "on" if inference_gateways(s) else "off"
        self.group.start("cloud", self.cloud_args, env=self.cloud_env)
        wait_for_port("127.0.0.1", self.cloud_port, timeout=60)
        health = httpx.get(f"{self.cloud_url}/healthz").json()
        self.printer.warn(f"cloud: {self.cloud_url} — custodian {health['custodian']}: {health['warning']}")
        self.staff = self._bootstrap_staff(admin_token, compliance_token)
        self.viewer_token = self._dashboard_viewer()
        self.printer.note(f"dashboard: {self.cloud_url}/dashboard  read-only token (auditor {VIEWER}): "
                          f"{self.viewer_token}")
        release_key = ReleaseKey.model_validate(httpx.get(f"{self.cloud_url}/v1/release-key").json()).public_key
        p = s.privacy
        node_flags = ["--epsilon-cap", str(p.participant_epsilon_cap), "--delta", str(p.dp_delta),
                      "--accountant", p.dp_accountant, "--privacy-rng", "simulation", "--seed", str(s.scenario.seed),
                      "--log-level", "warning"]
        if p.dp_noise_multiplier is not None:
            node_flags += ["--noise-multiplier", str(p.dp_noise_multiplier)]
        devices = device_ids(s)
        if s.release_checks is not None:
            self.lingering = set(inference_gateways(s))
        for g in s.gateways:
            relays = {"broker": TcpRelay("127.0.0.1", self.broker.port),
                      "cloud": TcpRelay("127.0.0.1", self.cloud_port)}
            self.relays[g.id] = relays
            (out / g.id).mkdir(exist_ok=True)
            (out / g.id / "devices.txt").write_text("\n".join(devices[g.id]) + "\n")
            self.group.start(g.id, ["gateway", "run", "--id", g.id, "--state-dir", str(out / g.id),
                                    "--broker-port", str(relays["broker"].port), "--metrics-port", "0",
                                    "--cloud-url", f"http://127.0.0.1:{relays['cloud'].port}", *node_flags],
                             env=self._enroll_env(g.id))
        via = self._start_regions() if self.regions else {}
        if self.pool_processes:
            self._start_hospital_pools(csvs, node_flags, via)
        else:
            for h in s.hospitals:
                region = ["--region", via[h.id][0], "--region-url", via[h.id][1]] if h.id in via else []
                self.group.start(h.id, ["hospital", "run", "--id", h.id, "--state-dir", str(out / h.id), "--data",
                                        str(csvs[h.id]), "--cloud-url", self.cloud_url, *node_flags, *region,
                                        "--eval-holdout-patients", str(h.eval_holdout_patients)],
                                 env=self._enroll_env(h.id))
        wait_until(self._all_enrolled, timeout=180, what="every participant to enroll")
        self.printer.note(f"enrolled: {', '.join(s.participants)}")
        ports = {g.id: read_json(out / g.id / "metrics.json").get("port") for g in s.gateways}
        if ports:
            self.printer.note("gateway metrics: " + ", ".join(f"{gw} http://127.0.0.1:{port}/metrics"
                                                              for gw, port in ports.items() if port))
        if self.lingering:  # hubs start with the initial model's signed TFLite release, not minutes later
            wait_until(lambda: httpx.get(f"{self.cloud_url}/v1/releases/current/tflite").status_code == 200,
                       timeout=180, what="the initial model's TFLite release")
        self.clock = SimClock(sim_start=DEFAULT_SIM_START, wall_start=time.time() + 2.0, accel=s.scenario.accel)
        ldp = ["--ldp-mechanism", p.ldp_mechanism]
        if p.ldp_mechanism != "none":
            ldp += ["--privacy-unit", p.ldp_unit]
        if p.ldp_mechanism != "none" and p.ldp_unit == "patient-day":  # a device's whole UTC day, one budget
            ldp += ["--daily-budget", str(p.ldp_epsilon_per_day)]
        if p.ldp_epsilon is not None:  # per reading: the labelled event-level option
            ldp += ["--ldp-epsilon", str(p.ldp_epsilon)]
        if p.ldp_daily_cap is not None:
            ldp += ["--daily-cap", str(p.ldp_daily_cap)]
        dying = {f.target for f in s.faults if f.kind == "battery_death"}
        for g in s.gateways:  # one fleet process per gateway; a device whose battery will die runs on its own
            common = ["--broker-port", str(self.broker.port), "--privacy-rng", "simulation",  # labelled, seeded
                      "--seed", str(s.scenario.seed),
                      "--days", str(s.scenario.days), "--accel", str(s.scenario.accel),
                      "--sim-start", str(self.clock.sim_start), "--wall-start", str(self.clock.wall_start),
                      "--traces", str(self.traces), *(["--profile", g.profile] if g.profile else []), *ldp,
                      "--release-key", release_key, *(["--linger"] if g.id in self.lingering else [])]
            in_fleet = g.devices - (g.id in dying)
            if in_fleet:
                self.group.start(f"fleet-{g.id}", [
                    "fleet", "run", "--gateways", g.id, "--devices-per-gateway", str(in_fleet), *common,
                    "--state-dir", str(out / f"fleet-{g.id}"), "--status-file", str(out / f"fleet-{g.id}.json")],
                    finite=True)
            if g.id in dying:
                dev = devices[g.id][-1]
                self.group.start(f"device-{dev}", [
                    "device", "run", "--device-id", dev, "--gateway", g.id, *common,
                    "--state-dir", str(out / f"device-{dev}"), "--status-file", str(out / f"fleet-{dev}.json")],
                    finite=True)

    def _start_regions(self) -> dict[str, tuple[str, str]]:
        """`regions` region relays (`wearfed region serve`), each enrolled with a one-time token and taking the
        hospitals dealt to it round-robin; hospital id -> (region id, relay URL)."""
        via: dict[str, tuple[str, str]] = {}
        for k in range(self.regions):
            rid, port = f"region-{k + 1}", free_port()
            members = [h.id for h in self.s.hospitals[k::self.regions]]
            token = self._approved(self.staff["admin"].post("/v1/enrollment-tokens",
                                                            json={"participant_id": rid, "kind": "region"}))["token"]
            self.group.start(rid, ["region", "serve", "--id", rid, "--cloud", self.cloud_url, "--state-dir",
                                   str(self.out / rid), "--port", str(port), "--members", ",".join(members),
                                   "--flush-after", "5", "--log-level", "warning"],
                             env={"WEARFED_REGION_TOKEN": token})
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda url=url: self._relay_up(url), timeout=120, what=f"region relay {rid}")
            via.update(dict.fromkeys(members, (rid, url)))
        self.printer.note(f"regions: {self.regions} relays sum the hospitals' updates")
        return via

    @staticmethod
    def _relay_up(url: str) -> bool:
        try:
            return httpx.get(f"{url}/healthz").json().get("status") == "ok"
        except httpx.TransportError:
            return False

    def _start_hospital_pools(self, csvs: dict[str, Path], node_flags: list[str],
                              via: dict[str, tuple[str, str]]) -> None:
        """Hospitals dealt round-robin into `pool_processes` pool processes (specs hold one-time tokens: 0600)."""
        pools = [self.s.hospitals[k::self.pool_processes] for k in range(self.pool_processes)]
        for k, members in enumerate(p for p in pools if p):
            spec = self.out / f"hospital-pool-{k}.json"
            nodes = [{"id": h.id, "data": str(csvs[h.id].relative_to(self.out)), "state_dir": h.id,
                      "enroll_token": self._enroll_env(h.id)["WEARFED_ENROLL_TOKEN"],
                      **({"region": via[h.id][0], "region_url": via[h.id][1]} if h.id in via else {})}
                     for h in members]
            spec.touch(mode=0o600)
            spec.write_text(json.dumps({"nodes": nodes}, indent=1))
            ray = ["--ray", self.ray_address, "--training-slots", str(len(members))] if self.ray_address else []
            self.group.start(f"hospital-pool-{k}", ["hospital", "pool", "--spec", str(spec),
                                                    "--cloud-url", self.cloud_url, *node_flags, *ray])

    def _approved(self, request: httpx.Response, staff: dict[str, httpx.Client] | None = None) -> dict:
        """An admin's two-person request, approved by the compliance officer; its one-time secret."""
        request.raise_for_status()
        doc = request.json()
        approver = (staff or self.staff)["compliance_officer"]
        approver.post(f"/v1/approvals/{doc['id']}/approve").raise_for_status()
        return doc["secret"]

    def _enroll_env(self, pid: str) -> dict[str, str]:
        secret = self._approved(self.staff["admin"].post("/v1/enrollment-tokens", json={"participant_id": pid}))
        return {"WEARFED_ENROLL_TOKEN": secret["token"]}

    def _bootstrap_staff(self, admin_token: str, compliance_token: str) -> dict[str, httpx.Client]:
        """One user per role the replay acts in (separate users: segregation of duties)."""
        def client(token: str) -> httpx.Client:
            return httpx.Client(base_url=self.cloud_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

        staff = {"admin": client(admin_token), "compliance_officer": client(compliance_token)}
        for role in STAFF_ROLES:
            if role in staff:
                continue
            name = f"replay-{role.replace('_', '-')}"
            secret = self._approved(staff["admin"].post("/v1/users", json={"name": name, "role": role}), staff)
            staff[role] = client(secret["token"])
        return staff

    def _dashboard_viewer(self) -> str:
        """A read-only user for the dashboard (role auditor), made by the two-person flow; its bearer token."""
        return self._approved(self.staff["admin"].post("/v1/users", json={"name": VIEWER, "role": "auditor"}))["token"]

    def keep_open(self) -> None:
        """Leave the federation up after the last round (cloud, gateways, hospitals, broker) until Ctrl-C."""
        self.printer.note(f"federation kept up: dashboard {self.cloud_url}/dashboard (read-only token above); "
                          "Ctrl-C stops it")
        daemons = [n for n in self.group.procs if not n.startswith(("fleet-", "device-"))]
        try:
            while True:
                self.group.check_alive(*daemons)
                time.sleep(1.0)
        except KeyboardInterrupt:
            self.printer.note("Ctrl-C: stopping the federation")

    def _all_enrolled(self) -> bool:
        self.group.check_alive()
        return len(self._get("/v1/participants")) == len(self.s.participants)

    def _get_as(self, model: type[R], path: str) -> R:
        """GET as admin, read as the contract's response model (federation.responses)."""
        return model.model_validate(self._get(path))

    def _get(self, path: str) -> dict | list:
        """GET as admin, riding out a cloud restart (a cloud_crash fault)."""
        for _ in range(600):
            with contextlib.suppress(httpx.TransportError):
                resp = self.staff["admin"].get(path)
                if resp.status_code < 500:
                    resp.raise_for_status()
                    return resp.json()
            self._wait_for_cloud()
        raise TimeoutError(f"the cloud did not answer GET {path}")

    def _wait_for_cloud(self) -> None:
        """Between retries, keep the fault schedule running: the restart of a crashed cloud is one of its edges."""
        if self.clock is not None:
            self._faults(self.clock.now())
        time.sleep(0.2)

    def _post(self, role: str, path: str, body: dict | None = None) -> httpx.Response:
        for _ in range(600):
            with contextlib.suppress(httpx.TransportError):
                resp = self.staff[role].post(path, json=body)
                if resp.status_code < 500:
                    return resp
            self._wait_for_cloud()
        raise TimeoutError(f"the cloud did not answer POST {path}")

    # -- the simulated timeline ------------------------------------------------------------------------
    def device_processes(self) -> list[str]:
        return [n for n in self.group.procs if n.startswith(("fleet-", "device-"))]

    def published(self) -> int:
        return sum(read_json(p).get("published", 0) for p in self.out.glob("fleet-*.json"))

    def tick(self, progress) -> None:  # noqa: ANN001
        """Keep processes honest, record fleet health, fire due fault edges, refresh progress."""
        self.group.check_alive()
        now = self.clock.now()
        self._faults(now)
        if not self.fleet_timeline or time.time() - self.fleet_timeline[-1]["wall"] > 1.0:
            docs = [read_json(p) for p in self.out.glob("fleet-*.json")]
            self.fleet_timeline.append({
                "wall": time.time(), "t": round((now - DEFAULT_SIM_START) / 3600, 3),
                **{k: sum(d.get(k) or 0 for d in docs) for k in ("published", "buffered", "dropped", "reconnects")},
                "connected": sum((d.get("devices") or 0) - (d.get("done") or 0) for d in docs),
                "battery": min((d["battery_min"] for d in docs if d.get("battery_min") is not None), default=None)})
        progress(self.published(), now)

    def _faults(self, now: float) -> None:
        hours = (now - DEFAULT_SIM_START) / 3600
        for i, f in enumerate(self.s.faults):
            started = any(e["index"] == i and e["edge"] == "start" for e in self.fault_log)
            ended = any(e["index"] == i and e["edge"] == "end" for e in self.fault_log)
            if not started and hours >= f.at_hours:
                self._fault_edge(i, f, "start", hours)
            elif started and not ended and hours >= f.at_hours + f.duration_minutes / 60:
                self._fault_edge(i, f, "end", hours)

    def _fault_edge(self, i: int, f: Fault, edge: str, hours: float) -> None:
        detail = FAULT_ACTIONS[f.kind](self, f, edge)
        self.fault_log.append({"index": i, "edge": edge, "t": round(hours, 3), "kind": f.kind,
                               "target": f.target, "detail": detail})
        self.printer.warn(f"fault {f.kind} {edge} at simulated hour {hours:.2f}: {detail}")

    # -- rounds --------------------------------------------------------------------------------------
    def _cpu(self) -> dict[str, dict[int, float] | None]:
        """CPU seconds each process of the cloud, the region relays and the participants has used so far, by pid
        (a tier with no process is left out)."""
        nodes = {g.id for g in self.s.gateways} | {h.id for h in self.s.hospitals}
        tiers = {"cloud": ["cloud"], "region_relays": [n for n in self.group.procs if n.startswith("region-")],
                 "participants": [n for n in self.group.procs if n.startswith("hospital-pool-") or n in nodes]}
        return {tier: self.group.cpu_seconds(names) for tier, names in tiers.items() if names}

    @staticmethod
    def _cpu_between(before: dict[str, dict[int, float] | None], after: dict[str, dict[int, float] | None]
                     ) -> dict[str, float]:
        """Each tier's CPU seconds between two readings: a process started meanwhile counts from zero, one that
        ended meanwhile is left out (its last part is lost with it)."""
        out = {}
        for tier, now in after.items():
            then = before.get(tier)
            if now is not None and then is not None:
                out[tier] = round(sum(cpu - then.get(pid, 0.0) for pid, cpu in now.items()), 2)
        return out

    def run_round(self, k: int, cutoff: float, heldout: HeldOut, progress) -> dict:  # noqa: ANN001
        t0, cpu0 = time.time(), self._cpu()
        r = self.s.rounds
        resp = self._post("data_scientist", "/v1/rounds", {"quorum": r.quorum, "deadline_s": r.deadline_s,
                                                           "data_cutoff": cutoff, "local_epochs": r.local_epochs})
        resp.raise_for_status()
        round_id = RoundView.model_validate(resp.json()).round

        def closed() -> bool:
            self.tick(progress)
            return self._get_as(RoundView, f"/v1/rounds/{round_id}").state not in (
                "open", "collecting", "aggregating", "decrypting")

        wait_until(closed, timeout=r.deadline_s + 120, what=f"round {round_id} to close")
        round_seconds = time.time() - t0  # open -> aggregated, decrypted and a model version created (or failed)
        cpu = self._cpu_between(cpu0, self._cpu())  # over the same span (participants: hospitals, pools, gateways)
        report = self._get_as(RoundReport, f"/v1/rounds/{round_id}")
        version = report.result_model_version
        row = {"round": round_id, "state": report.state, "participants": [u.participant for u in report.updates],
               "refusals": [r.model_dump() for r in report.refusals], "model_version": version,
               "failure_reason": report.failure_reason}
        if version is not None:
            m = self._get_as(ModelView, f"/v1/models/{version}")
            weights = np.frombuffer(base64.b64decode(m.weights), dtype=np.float32)
            scores = evaluate(weights, heldout)
            self.last_weights = weights
            self.last_model = {"model_version": version, "round": round_id}
            row.update({key: round(v, 4) for key, v in scores.items()})
            row["model_hash"] = m.hash
            # the data scientist who opened the round posts metrics, a compliance officer approves (never the
            # opener), the operator deploys
            self._post("data_scientist", f"/v1/rounds/{round_id}/metrics",
                       {"metrics": {key: float(v) for key, v in scores.items() if np.isfinite(v)}}).raise_for_status()
            if any(h.eval_holdout_patients for h in self.s.hospitals):  # approve on the same evidence every run
                with contextlib.suppress(TimeoutError):
                    wait_until(lambda: "federated" in self._get_as(Evaluations, f"/v1/models/{version}/evaluations")
                               .by_source, timeout=60, what=f"the hospitals' evaluation of model v{version}")
            approve = self._post("compliance_officer", f"/v1/rounds/{round_id}/approve")
            if approve.status_code == 200:
                self._post("operator", f"/v1/rounds/{round_id}/promote").raise_for_status()
            else:  # a gate (named in the reason) or the rules kept the candidate out of production
                row["gates_failed"] = approve.json().get("detail")
            row["metrics_by_source"] = self._get_as(Evaluations, f"/v1/models/{version}/evaluations").by_source
            row["model_status"] = self._get_as(ModelView, f"/v1/models/{version}").status
            row["state"] = self._get_as(RoundView, f"/v1/rounds/{round_id}").state
        dps = {u.participant: DPReport.model_validate(u.dp) for u in report.updates}
        row["epsilon"] = {p: {"value": round(d.epsilon_cumulative, 4), "round_value": round(d.epsilon_round, 4),
                              "delta": d.delta, "unit": d.unit, "accountant": d.accountant} for p, d in dps.items()}
        row["windows"] = {u.participant: u.n_samples for u in report.updates}  # patients, or windows
        row["bytes_up"] = sum(u.bytes for u in report.updates)
        row["round_seconds"] = round(round_seconds, 2)
        row["cpu_seconds"] = cpu
        row["seconds"] = round(time.time() - t0, 2)
        return row

    # -- the end -------------------------------------------------------------------------------------
    def drain(self) -> dict:
        """Wait for every fleet to finish and every acknowledged reading to land in a gateway's store."""
        for gw in self.lingering:  # hubs stay connected after their trace: stop them once it is all sent
            wait_until(lambda gw=gw: self._trace_sent(gw), timeout=300, what=f"{gw}'s hubs to send their traces")
            self.group.stop(f"fleet-{gw}")
        for name in self.device_processes():
            while name not in self.group.down and self.group.procs[name].poll() is None:
                self.tick(lambda *_: None)
                time.sleep(0.2)
        published = self.published()

        def statuses() -> list[GatewayStatus]:
            return [st for g in self.s.gateways if (st := read_status(self.out / g.id / "status.json", GatewayStatus))]

        with contextlib.suppress(TimeoutError):  # what never arrives is counted as lost below
            wait_until(lambda: sum(st.ingested for st in statuses()) >= published, timeout=60,
                       what="gateways to ingest every reading")
        time.sleep(1.2)  # one more status tick
        stats = statuses()
        total = sum(st.ingested for st in stats)
        return {"published": published, "ingested": total, "duplicates": sum(st.duplicates for st in stats),
                "rejected": sum(st.rejected for st in stats), "lost": max(0, published - total),
                "device_exit_codes": {n: self.group.procs[n].returncode for n in self.device_processes()}}

    def _trace_sent(self, gateway: str) -> bool:
        self.tick(lambda *_: None)
        per = device_states(self.out, [gateway])
        return bool(per) and all(d["state"] == "done" and d["buffered"] == 0 for d in per.values())

    def release_checks(self) -> dict:
        """The model's way to the wrist (sim/wrist.py), while the hubs still listen."""
        def post(path: str, body: dict) -> tuple[int, dict]:
            resp = self._post("operator", path, body)
            if resp.status_code != 409:
                resp.raise_for_status()
            return resp.status_code, resp.json()

        checks = self.s.release_checks
        return check_release_path(self.s, self.out, broker_port=self.broker.port, get=self._get, post=post,
                                  tick=lambda: self.tick(lambda *_: None), timeout_s=checks.timeout_s,
                                  rollback=checks.rollback)

    def stop(self) -> None:
        if self.group:
            self.group.stop_all()
        for relays in self.relays.values():
            for relay in relays.values():
                relay.close()
        if self.broker:
            self.broker.stop()


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through run_replay's `finally`: no orphaned daemons


def run_replay(s: Scenario, out: Path, *, broker: str = "auto", pool_processes: int = 0, regions: int = 0,
               keep_open: bool = False, ray_address: str | None = None) -> dict:
    """Replay `s` into `out`; with `keep_open`, the federation stays up after the last round until Ctrl-C; with
    `ray_address` (and `pool_processes`), the pools' node trainings run as tasks on that Ray cluster."""
    t_start = time.time()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    out = prepare_run_dir(out)
    (out / "scenario.json").write_text(s.model_dump_json(indent=2))
    replay = Replay(s, out, broker_pref=broker, pool_processes=pool_processes, regions=regions,
                    ray_address=ray_address)
    heldout = heldout_set(source=s.cohort.source, patients=s.cohort.heldout_patients, days=s.cohort.heldout_days,
                          seed=s.scenario.seed, sensor=s.cohort.sensor)
    span = s.scenario.days * 86400
    cutoffs = [DEFAULT_SIM_START + span * k / s.rounds.count for k in range(1, s.rounds.count + 1)]
    rounds: list[dict] = []
    initial: dict = {}
    release: dict | None = None
    explained: dict | None = None
    drill, drill_report = None, None
    try:
        replay.printer.note(describe_privacy(s))
        replay.start()
        if s.attack_drill is not None:
            from sim.attack_drill import Drill

            drill = Drill(replay, s.attack_drill)
            drill.arm()
        v0 = replay._get("/v1/models/0")
        initial = evaluate(np.frombuffer(base64.b64decode(v0["weights"]), dtype=np.float32), heldout)
        with replay.printer.streaming(start=DEFAULT_SIM_START, span_s=span) as progress:
            for k, cutoff in enumerate(cutoffs, start=1):
                while replay.clock.now() < cutoff + 600:  # ten simulated minutes of slack for in-flight readings
                    replay.tick(progress)
                    time.sleep(0.2)
                if drill is not None and k == s.attack_drill.at_round:
                    drill.start(after_round=rounds[-1]["round"])
                rounds.append(replay.run_round(k, cutoff, heldout, progress))
                replay.printer.round_table(rounds[-1])
                if drill is not None and k == s.attack_drill.at_round:
                    from sim.attack_drill import report

                    drill.join()
                    drill_report = report(drill)
                    replay.printer.attack_drill(drill_report)
            if s.release_checks is not None:
                release = replay.release_checks()
                replay.printer.release_checks(release)
            readings = replay.drain()
            drift = {"status": replay._get("/v1/drift"), "alerts": replay._get("/v1/drift/alerts")}
            explained = fetch_explanations(replay.staff["data_scientist"],  # a role of model.explain
                                           replay._get("/v1/models/promoted")["version"])
            if keep_open:
                replay.keep_open()
        replay.printer.readings(readings)
    finally:
        replay.stop()
    summary = {"scenario": s.scenario.name, "rounds": rounds, "readings": readings,
               "forecaster": forecaster_summary(), "privacy": privacy_summary(s, out, rounds),
               "broker": replay.broker.kind if replay.broker else None, "custodian": "insecure-dev-unsealed",
               "cohort": {"source": s.cohort.source, "sensor": s.cohort.sensor},
               "heldout": {"patients": heldout.patients, "windows": len(heldout.x)},
               "initial_model": {k: round(v, 4) for k, v in initial.items() if k.startswith(("rmse", "bg_rmse"))},
               "faults": [{"t": e["t"], "kind": e["kind"], "target": e["target"],
                           "detail": f"{e['edge']}: {e['detail']}"} for e in replay.fault_log],
               "fleet_timeline": [{k: v for k, v in p.items() if k != "wall"} for p in replay.fleet_timeline],
               "drift": drift, "wall_seconds": round(time.time() - t_start, 1),
               "parameters": run_parameters(s), "gates": promotion_gates(), "device_privacy": device_privacy(out),
               "sim_start": DEFAULT_SIM_START}
    if release is not None:
        summary["release_checks"] = release
    if explained is not None:
        summary["explanations"] = explained
    if drill_report is not None:
        summary["attack_drill"] = drill_report
    if replay.last_weights is not None:
        summary["clarke_points"] = clarke_points(replay.last_weights, heldout) | replay.last_model
    run = write_summary(summary, out)  # refused, naming the field, if it is not a `RunSummary`
    from sim.html_report import write_report

    write_report(run, out)
    replay.printer.note(f"summary: {out / 'summary.json'}  report: {out / 'report.html'}  "
                        f"cloud database: {out / 'cloud.db'}  wall time {run.wall_seconds} s")
    return run.document()
