"""Benchmark: devices held connected and end-to-end readings/s with zero loss, fleet runner vs. naive paho.

One run on this machine against a local Mosquitto the bench starts (free loopback port, raised open-file
limit). Two contenders, measured the same way in the same run:

- **fleet**: the real ``wearfed fleet run`` in a subprocess (one asyncio loop, one MQTT connection per
  device, on-disk spool, privacy odometer, QoS 1), with the default firmware profile (5-min readings); the
  simulated clock runs at ``--accel`` (300: one reading per device per wall second).
- **baseline**: the naive way, in a subprocess: one paho-mqtt 2 client per device (CallbackAPIVersion.
  VERSION2), each with its own network thread (``loop_start``), one scheduler thread publishing every
  device's reading at the same cadence (QoS 1, same CBOR batch format, no spool).

Connections are ramped at ``--connect-rate`` per second (Mosquitto on small hardware saturates near 100
connects/s; here it is loopback). A subscriber (paho, QoS 1) counts every reading by (device, seq): "lost" is
readings the sender counted as sampled that never arrived; latency is arrival time minus the wall time at
which the reading was due (its simulated timestamp on the shared clock), so it includes the device's spool,
both MQTT hops and the broker. Readings/s is the arrival rate in the steady window after the ramp.
"devices" is the most client connections the broker reported at once ($SYS/broker/clients/connected).

Run: ``python -m bench.fleet [--devices 5000] [--baseline-devices 5000] [--seconds 30] [--connect-rate 500]``
Last line: ``fleet: devices=<n> readings_per_s=<r> lost=<k> p99_ms=<latency> baseline_devices=<n>
baseline_readings_per_s=<r>``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from federation.clock import DEFAULT_SIM_START, SimClock
from federation.telemetry import LDPHeader, Reading, ReadingBatch, decode_batch, encode_batch, readings_topic
from sim.broker import free_port, start_mosquitto

INTERVAL_S = 300  # the default profile's sample interval (dexcom-g7)


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1_048_576
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


@dataclass
class Receiver:
    """Counts readings by (device, seq) and the latency of each first arrival."""

    port: int
    clock: SimClock | None = None
    seen: set = field(default_factory=set)
    arrivals: list = field(default_factory=list)  # (arrival wall time, latency s) of first arrivals
    duplicates: int = 0
    connected_max: int = 0
    connected_now: int = 0
    connected_log: list = field(default_factory=list)  # (wall time, device connections the broker reports)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-receiver-{os.getpid()}", clean_session=True)
        c.max_inflight_messages_set(1000)
        c.on_message = self._on_message
        c.on_connect = lambda cl, *_: (cl.subscribe("wearfed/v1/+/+/readings", qos=1),
                                       cl.subscribe("$SYS/broker/clients/connected", qos=0))
        c.connect("127.0.0.1", self.port, keepalive=60)
        c.loop_start()
        self._client = c

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def reset(self, clock: SimClock) -> None:
        with self.lock:
            self.clock, self.seen, self.arrivals, self.duplicates, self.connected_max = clock, set(), [], 0, 0
            self.connected_log = []

    def _on_message(self, _c, _u, msg: mqtt.MQTTMessage) -> None:  # noqa: ANN001
        now = time.time()
        if msg.topic.startswith("$SYS"):
            self.connected_now = int(msg.payload)
            self.connected_max = max(self.connected_max, self.connected_now - 1)  # minus this receiver
            self.connected_log.append((now, self.connected_now - 1))
            return
        batch = decode_batch(msg.payload)
        with self.lock:
            for r in batch.readings:
                key = (batch.device, r.seq)
                if key in self.seen:
                    self.duplicates += 1
                    continue
                self.seen.add(key)
                self.arrivals.append((now, now - self.clock.wall_at(r.t)))


@dataclass
class Result:
    name: str
    devices: int
    offered: int  # devices asked for
    sampled: int
    received: int
    lost: int
    readings_per_s: float
    p50_ms: float
    p99_ms: float
    window_s: float
    duplicates: int
    note: str = ""


def _measure(rx: Receiver, *, name: str, offered: int, sampled: int, window: tuple[float, float], note: str) -> Result:
    with rx.lock:
        arrivals = np.array(rx.arrivals) if rx.arrivals else np.zeros((0, 2))
        received, dup = len(rx.seen), rx.duplicates
    w0, w1 = window
    before = [n for t, n in rx.connected_log if t < w0]  # $SYS is published only on change
    held = before[-1:] + [n for t, n in rx.connected_log if w0 <= t <= w1]
    dev = min(held) if held else 0  # connections held through the whole steady window
    inside = arrivals[(arrivals[:, 0] >= w0) & (arrivals[:, 0] <= w1)] if len(arrivals) else arrivals
    lat = inside[:, 1] * 1000 if len(inside) else np.array([float("nan")])
    return Result(name, dev, offered, sampled, received, max(0, sampled - received),
                  len(inside) / max(1e-9, w1 - w0), float(np.percentile(lat, 50)), float(np.percentile(lat, 99)),
                  w1 - w0, dup, note)


def _wait_connected(rx: Receiver, n: int, deadline: float) -> float:
    """Wall time at which the broker first reported n device connections (or the deadline)."""
    while time.time() < deadline:
        if rx.connected_now - 1 >= n:
            return time.time()
        time.sleep(0.2)
    return deadline


def _drain(rx: Receiver, sampled: int, *, idle_s: float = 5.0, limit_s: float = 60.0) -> None:
    end, last, last_n = time.time() + limit_s, time.time(), -1
    while time.time() < end and len(rx.seen) < sampled:
        if len(rx.seen) != last_n:
            last, last_n = time.time(), len(rx.seen)
        elif time.time() - last > idle_s:
            return
        time.sleep(0.2)


def run_fleet(rx: Receiver, port: int, *, devices: int, seconds: float, accel: float, connect_rate: float,
              work: Path, odometer_block: int, workers: int) -> Result:
    ramp = devices / connect_rate
    clock = SimClock(sim_start=DEFAULT_SIM_START, wall_start=time.time() + 8.0, accel=accel)
    days = (2 * ramp + seconds + 15) * accel / 86400
    rx.reset(clock)
    status = work / "fleet-status.json"
    cmd = [sys.executable, "-m", "federation.cli", "fleet", "run", "--gateways", "bench", "--devices-per-gateway",
           str(devices), "--broker-port", str(port), "--days", f"{days:.6f}", "--accel", str(accel),
           "--sim-start", str(clock.sim_start), "--wall-start", str(clock.wall_start), "--state-dir",
           str(work / "fleet-state"), "--status-file", str(status), "--connect-rate", str(connect_rate),
           "--odometer-block", str(odometer_block), "--workers", str(workers)]
    with open(work / "fleet.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        t_end = clock.wall_at(clock.sim_start + days * 86400)
        t_conn = _wait_connected(rx, devices, deadline=t_end)
        try:
            proc.wait(timeout=max(10.0, t_end - time.time() + 120))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    doc = json.loads(status.read_text()) if status.exists() else {}
    sampled = int(doc.get("sampled", 0))
    _drain(rx, sampled)
    peak = max((n for _, n in rx.connected_log), default=0)
    t_peak = min((t for t, n in rx.connected_log if n >= peak), default=t_conn)
    w0 = max(min(t_conn, t_peak), clock.wall_start) + 3.0  # steady window: after the ramp, to the trace's end
    if w0 > t_end - 5:
        w0 = t_end - seconds
    note = f"exit={proc.returncode} reconnects={doc.get('reconnects')} dropped={doc.get('dropped')}"
    return _measure(rx, name=f"fleet (wearfed fleet run, {workers} loop(s))", offered=devices, sampled=sampled,
                    window=(w0, t_end), note=note)


# -- baseline: one paho client and network thread per device ---------------------------------------------


def baseline_worker(args: argparse.Namespace) -> None:
    """Runs in its own process: ramp paho clients (loop_start each), then publish each device's readings."""
    raise_nofile()
    clock = SimClock(sim_start=args.sim_start, wall_start=args.wall_start, accel=args.accel)
    header = LDPHeader(mechanism="hybrid", epsilon=8.0, lo=40.0, hi=400.0)
    clients: list[mqtt.Client] = []
    acked = [0]
    lock = threading.Lock()
    failure = ""

    def on_publish(*_a: object) -> None:
        with lock:
            acked[0] += 1

    for i in range(args.devices):
        try:
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"base-dev{i:05d}", clean_session=False)
            c.on_publish = on_publish
            c.connect("127.0.0.1", args.port, keepalive=60)
            c.loop_start()
        except Exception as exc:  # out of threads, file descriptors, ...: the ramp ends here
            failure = f"client {i}: {exc!r}"
            break
        clients.append(c)
        time.sleep(1.0 / args.connect_rate)
        if (i + 1) % 100 == 0:  # the ramp ends when new clients no longer stay connected
            time.sleep(1.0)
            alive_now = sum(c.is_connected() for c in clients)
            if alive_now < len(clients) - 100:
                failure = f"ramp stopped at {len(clients)} clients: only {alive_now} stayed connected"
                break
    time.sleep(2.0)
    alive = [c for c in clients if c.is_connected()]
    dead = [c for c in clients if not c.is_connected()]
    for c in dead:  # their network threads died (select() cannot watch fds >= 1024); stop the retries
        c.loop_stop()
    if len(alive) < len(clients) and not failure:
        failure = f"{len(clients) - len(alive)} clients lost their connection after connecting"
    Path(args.out).write_text(json.dumps({"clients": len(clients), "alive": len(alive), "failure": failure}))
    n_steps = int(args.days * 86400 // INTERVAL_S)
    sampled = 0
    for k in range(n_steps):
        t = int(clock.sim_start) + k * INTERVAL_S
        delay = clock.wall_at(t) - time.time()
        if delay > 0:
            time.sleep(delay)
        for i, c in enumerate(alive):
            dev = f"base-dev{i:05d}"
            payload = encode_batch(ReadingBatch(epoch=1, device=dev, ldp=header,
                                                readings=(Reading(seq=k, t=t, value=120.0),)))
            if c.publish(readings_topic("base", dev), payload, qos=1).rc == mqtt.MQTT_ERR_SUCCESS:
                sampled += 1
    time.sleep(5.0)
    Path(args.out).write_text(json.dumps({"clients": len(clients), "alive": len(alive), "sampled": sampled,
                                          "acked": acked[0], "failure": failure}))
    for c in alive:
        c.disconnect()
    os._exit(0)  # thousands of network threads: do not wait for each to join


def run_baseline(rx: Receiver, port: int, *, devices: int, seconds: float, accel: float, connect_rate: float,
                 work: Path) -> Result:
    ramp = devices / connect_rate
    clock = SimClock(sim_start=DEFAULT_SIM_START, wall_start=time.time() + ramp + 5.0, accel=accel)
    days = seconds * accel / 86400
    rx.reset(clock)
    out = work / "baseline.json"
    cmd = [sys.executable, "-m", "bench.fleet", "--baseline-worker", "--port", str(port), "--devices", str(devices),
           "--connect-rate", str(connect_rate), "--accel", str(accel), "--sim-start", str(clock.sim_start),
           "--wall-start", str(clock.wall_start), "--days", f"{days:.6f}", "--out", str(out)]
    with open(work / "baseline.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        t_end = clock.wall_at(clock.sim_start + days * 86400)
        try:
            proc.wait(timeout=ramp + seconds + 180)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    doc = json.loads(out.read_text()) if out.exists() else {}
    sampled = int(doc.get("sampled", 0))
    _drain(rx, sampled)
    note = f"exit={proc.returncode} clients={doc.get('clients')} alive={doc.get('alive')} {doc.get('failure', '')}"
    res = _measure(rx, name="baseline (paho, thread per device)", offered=devices, sampled=sampled,
                   window=(clock.wall_start + 2.0, t_end), note=note)
    # a client whose network thread died keeps its socket open until the broker's keepalive expires: the
    # broker still counts it, but it can no longer publish; held = clients still connected on the client side
    res.devices = min(res.devices, int(doc.get("alive", 0)))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--baseline-devices", type=int, default=2000,
                    help="most paho clients to try (the ramp also stops when new ones stop staying connected)")
    ap.add_argument("--seconds", type=float, default=30.0, help="steady-state wall seconds after the ramp")
    ap.add_argument("--accel", type=float, default=300.0, help="300: one reading per device per wall second")
    ap.add_argument("--connect-rate", type=float, default=500.0)
    ap.add_argument("--odometer-block", type=int, default=12, help="fleet: readings per durable odometer write")
    ap.add_argument("--workers", type=int, default=2, help="fleet processes (one asyncio loop each)")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--baseline-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--sim-start", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--wall-start", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--days", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.baseline_worker:
        baseline_worker(args)
        return 0
    nofile = raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="wearfed-bench-fleet-"))
    port = free_port()
    broker = start_mosquitto(port, work / "mq", extra="max_connections -1\nmax_inflight_messages 1000\n"
                                                            "sys_interval 1\npersistence false\n")
    print(f"broker: mosquitto on 127.0.0.1:{port}, open-file limit {nofile}, work dir {work}", flush=True)
    rx = Receiver(port)
    rx.start()
    results = []
    try:
        results.append(run_fleet(rx, port, devices=args.devices, seconds=args.seconds, accel=args.accel,
                                 connect_rate=args.connect_rate, work=work, odometer_block=args.odometer_block,
                                 workers=args.workers))
        print(results[-1], flush=True)
        if not args.skip_baseline:
            results.append(run_baseline(rx, port, devices=args.baseline_devices,
                                        seconds=args.seconds, accel=args.accel, connect_rate=args.connect_rate,
                                        work=work))
            print(results[-1], flush=True)
    finally:
        rx.stop()
        broker.stop()
    print(f"\n{'contender':38s} {'devices':>8s} {'sampled':>9s} {'received':>9s} {'lost':>6s} {'readings/s':>10s} "
          f"{'p50 ms':>8s} {'p99 ms':>8s}  note")
    for r in results:
        print(f"{r.name:38s} {r.devices:8d} {r.sampled:9d} {r.received:9d} {r.lost:6d} {r.readings_per_s:10.0f} "
              f"{r.p50_ms:8.1f} {r.p99_ms:8.1f}  {r.note}")
    f = results[0]
    b = results[1] if len(results) > 1 else Result("none", 0, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0)
    if b.devices and b.readings_per_s > 0:
        print(f"ratio fleet/baseline: devices {f.devices / b.devices:.2f}x, readings/s "
              f"{f.readings_per_s / max(b.readings_per_s, 1e-9):.2f}x")
    print(f"fleet: devices={f.devices} readings_per_s={f.readings_per_s:.0f} lost={f.lost} p99_ms={f.p99_ms:.0f} "
          f"baseline_devices={b.devices} baseline_readings_per_s={b.readings_per_s:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
