"""Benchmark: CPU per QoS 1 publish with 5,000 devices in one process, the device's own client vs. gmqtt.

Decides whether `device/mqtt_lite.py` (hand-written, MQTT 3.1.1) stays: the named peer is gmqtt 0.8.0, a
maintained asyncio MQTT client (MQTT 5 and 3.1.1). The rule from issue 14: keep ours only if the library costs
more than 1.5x the CPU per publish.

Each contender runs in its own subprocess (so CPU time is its own) against one local Mosquitto the bench starts
(free loopback port, open-file limit raised): it opens `--devices` connections in one asyncio loop (ramped at
`--connect-rate` per second; persistent sessions, keep-alive 60 s, as devices connect), then every device
publishes `--per-device` QoS 1 messages one after another, each awaited until its PUBACK (a device deletes a
reading from its spool only then), all devices at once. Payload: a real one-reading telemetry batch (CBOR) on
the device's readings topic. Measured: the process's user + system CPU time over the publish phase only
(`resource.getrusage`), divided by the publishes; also the wall time of the phase and the CPU of connecting.

gmqtt has no per-message future: its PUBACK handling removes the message from a `PersistentStorage` given to the
client, whose `wait_empty()` is awaited after each publish (one message in flight per device, so "empty" is "this
one was acknowledged"). gmqtt speaks MQTT 3.1.1 here (``version=MQTTv311``) like the device client.

Run: ``python -m bench.mqtt_clients [--devices 5000] [--per-device 10] [--repeats 2] [--contenders lite,gmqtt]``
Last line: ``mqtt_clients: lite_us=<cpu us/publish> gmqtt_us=<...> ratio_gmqtt_over_lite=<x> decision=<keep|gmqtt>``

``--hardening`` instead runs issue 14's faults against each client (the misbehaving broker of
tests/device/fake_broker.py on loopback): a PUBLISH header claiming 200 MB with 60 MB streamed (RSS growth of the
client process), a broker that never sends PUBACK (does the publish fail within 15 s?), and a reserved packet
type 15 after CONNACK (is the connection closed?). Each client runs in its own subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from federation.telemetry import LDPHeader, Reading, ReadingBatch, encode_batch, readings_topic

KEEP_IF_LIBRARY_COSTS_MORE_THAN = 1.5  # issue 14: keep the hand-written client only above this ratio


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _payload(device: str, k: int) -> bytes:
    return encode_batch(ReadingBatch(device=device, epoch=1, ldp=LDPHeader("hybrid", 8.0, 40.0, 400.0),
                                     readings=(Reading(k, 1_767_225_600 + 300 * k, 123.25),)))


async def _lite(port: int, devices: int, per: int, rate: float) -> dict:
    from device.mqtt_lite import LiteClient

    clients = []
    t0, c0 = time.perf_counter(), _cpu()
    for i in range(devices):
        c = LiteClient("127.0.0.1", port, client_id=f"bench-lite-{i:05d}", clean_session=False, keepalive=60,
                       timeout=60)
        clients.append(await c.__aenter__())
        if (i + 1) % max(1, int(rate / 10)) == 0:
            await asyncio.sleep(0.1)
    connect_cpu = _cpu() - c0
    payloads = [[_payload(f"bench-lite-{i:05d}", k) for k in range(per)] for i in range(devices)]
    topics = [readings_topic("bench", f"bench-lite-{i:05d}") for i in range(devices)]

    async def device(i: int) -> None:
        for k in range(per):
            await clients[i].publish(topics[i], payloads[i][k], qos=1)

    t1, c1 = time.perf_counter(), _cpu()
    await asyncio.gather(*(device(i) for i in range(devices)))
    out = {"publish_cpu_s": _cpu() - c1, "publish_wall_s": time.perf_counter() - t1, "connect_cpu_s": connect_cpu,
           "connect_wall_s": t1 - t0}
    for c in clients:
        await c.__aexit__(None, None, None)
    return out


async def _gmqtt(port: int, devices: int, per: int, rate: float) -> dict:
    from gmqtt import Client
    from gmqtt.mqtt.constants import MQTTv311
    from gmqtt.storage import PersistentStorage

    clients, stores = [], []
    t0, c0 = time.perf_counter(), _cpu()
    for i in range(devices):
        store = PersistentStorage()
        c = Client(f"bench-gmqtt-{i:05d}", clean_session=False, persistent_storage=store)
        await c.connect("127.0.0.1", port, keepalive=60, version=MQTTv311)
        clients.append(c)
        stores.append(store)
        if (i + 1) % max(1, int(rate / 10)) == 0:
            await asyncio.sleep(0.1)
    connect_cpu = _cpu() - c0
    payloads = [[_payload(f"bench-gmqtt-{i:05d}", k) for k in range(per)] for i in range(devices)]
    topics = [readings_topic("bench", f"bench-gmqtt-{i:05d}") for i in range(devices)]

    async def device(i: int) -> None:
        for k in range(per):
            clients[i].publish(topics[i], payloads[i][k], qos=1)
            await stores[i].wait_empty()  # this device's one message in flight was acknowledged

    t1, c1 = time.perf_counter(), _cpu()
    await asyncio.gather(*(device(i) for i in range(devices)))
    out = {"publish_cpu_s": _cpu() - c1, "publish_wall_s": time.perf_counter() - t1, "connect_cpu_s": connect_cpu,
           "connect_wall_s": t1 - t0}
    for c in clients:
        await c.disconnect()
    return out


WORKERS = {"lite": _lite, "gmqtt": _gmqtt}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _probe(client: str) -> dict:
    """The three faults against one client; what it did."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "device"))
    from fake_broker import Behaviour, FakeBroker, packet

    out: dict = {"client": client}

    async def connect(port: int, cid: str):  # noqa: ANN202
        if client == "lite":
            from device.mqtt_lite import LiteClient

            c = LiteClient("127.0.0.1", port, client_id=cid, timeout=5.0, keepalive=60)
            return await c.__aenter__()
        from gmqtt import Client
        from gmqtt.mqtt.constants import MQTTv311

        c = Client(cid, clean_session=True)
        await c.connect("127.0.0.1", port, keepalive=60, version=MQTTv311)
        return c

    b = FakeBroker(Behaviour(huge_publish_mb=60))
    c = await connect(b.port, "probe-1")
    before = _rss_mb()
    t0 = time.perf_counter()
    if client == "lite":
        asyncio.ensure_future(c.subscribe("m", qos=1))
    else:
        c.subscribe("m", qos=1)
    while not b.streamed.is_set() and time.perf_counter() - t0 < 300:
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    out["rss_growth_mb_for_60mb_of_a_200mb_message"] = round(_rss_mb() - before, 1)
    out["seconds_to_take_60mb"] = round(time.perf_counter() - t0, 1)
    b.close()

    b = FakeBroker(Behaviour(puback=False))
    c = await connect(b.port, "probe-2")
    t0 = time.perf_counter()
    try:
        if client == "lite":
            await asyncio.wait_for(c.publish("t", b"x", qos=1), 15)
        else:
            store = c._persistent_storage  # gmqtt keeps unacknowledged QoS 1 messages here
            c.publish("t", b"x", qos=1)
            await asyncio.wait_for(store.wait_empty(), 15)
        out["no_puback"] = "acknowledged?"
    except TimeoutError:
        out["no_puback"] = "still waiting after 15 s, connection kept"
    except Exception as exc:  # noqa: BLE001 - what the client raised is the result
        out["no_puback"] = f"{type(exc).__name__} after {time.perf_counter() - t0:.1f} s, connection dropped"
    b.close()

    b = FakeBroker(Behaviour(after_connack=packet(15, 0, b"")))
    c = await connect(b.port, "probe-3")
    await asyncio.sleep(2.0)
    out["reserved_packet_type"] = "connection closed" if b.closed_by_client else "ignored, connection kept"
    b.close()
    return out


def _hardening(contenders: list[str]) -> None:
    print("| client | RSS growth, 60 MB of a 200 MB PUBLISH | time to take it | broker never sends PUBACK | "
          "reserved packet type 15 |")
    print("|---|---:|---:|---|---|")
    for name in contenders:
        cmd = [sys.executable, "-m", "bench.mqtt_clients", "--probe", name]
        res = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=900).stdout.splitlines()[-1])
        print(f"| {name} | {res['rss_growth_mb_for_60mb_of_a_200mb_message']} MB | {res['seconds_to_take_60mb']} s | "
              f"{res['no_puback']} | {res['reserved_packet_type']} |", flush=True)


def _worker(args: argparse.Namespace) -> None:
    from bench.fleet import raise_nofile

    raise_nofile()
    res = asyncio.run(WORKERS[args.worker](args.port, args.devices, args.per_device, args.connect_rate))
    res["publishes"] = args.devices * args.per_device
    res["cpu_us_per_publish"] = 1e6 * res["publish_cpu_s"] / res["publishes"]
    print(json.dumps(res))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=5000)
    p.add_argument("--per-device", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2, help="runs per contender, alternating; the median is reported")
    p.add_argument("--connect-rate", type=float, default=500.0)
    p.add_argument("--contenders", default="lite,gmqtt")
    p.add_argument("--hardening", action="store_true", help="run issue 14's broker faults against each client")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--probe", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker(args)
        return
    if args.probe:
        print(json.dumps(asyncio.run(_probe(args.probe))))
        return
    if args.hardening:
        _hardening([c for c in args.contenders.split(",") if c])
        return

    from bench.fleet import raise_nofile
    from sim.broker import free_port, start_mosquitto

    raise_nofile()
    contenders = [c for c in args.contenders.split(",") if c]
    work = Path(tempfile.mkdtemp(prefix="wearfed-bench-mqtt-"))
    port = free_port()
    broker = start_mosquitto(port, work, extra="max_connections -1\npersistence false\n")
    runs: dict[str, list[dict]] = {c: [] for c in contenders}
    try:
        for r in range(args.repeats):
            for name in contenders:
                cmd = [sys.executable, "-m", "bench.mqtt_clients", "--worker", name, "--port", str(port),
                       "--devices", str(args.devices), "--per-device", str(args.per_device),
                       "--connect-rate", str(args.connect_rate)]
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
                if out.returncode:
                    raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
                res = json.loads(out.stdout.strip().splitlines()[-1])
                runs[name].append(res)
                print(f"run {r + 1} {name:6s}: {res['cpu_us_per_publish']:7.1f} us CPU/publish, publish phase "
                      f"{res['publish_wall_s']:.1f} s wall for {res['publishes']} publishes; connect "
                      f"{res['connect_cpu_s']:.1f} s CPU / {res['connect_wall_s']:.1f} s wall", flush=True)
    finally:
        broker.stop()
    med = {n: statistics.median(r["cpu_us_per_publish"] for r in rs) for n, rs in runs.items()}
    print()
    print(f"| client | devices | publishes/run | CPU us per QoS 1 publish (median of {args.repeats}) | runs |")
    print("|---|---:|---:|---:|---|")
    for n, rs in runs.items():
        each = ", ".join(f"{r['cpu_us_per_publish']:.1f}" for r in rs)
        print(f"| {n} | {args.devices} | {args.devices * args.per_device} | {med[n]:.1f} | {each} |")
    if {"lite", "gmqtt"} <= set(med):
        ratio = med["gmqtt"] / med["lite"]
        decision = "keep" if ratio > KEEP_IF_LIBRARY_COSTS_MORE_THAN else "gmqtt"
        print(f"mqtt_clients: lite_us={med['lite']:.1f} gmqtt_us={med['gmqtt']:.1f} "
              f"ratio_gmqtt_over_lite={ratio:.2f} decision={decision}")


if __name__ == "__main__":
    main()
