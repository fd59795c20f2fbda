"""Issue 13, attacks 1 and 6, against real `wearfed device run` processes and a real Mosquitto.

1. Recomputable LDP noise. Before: every device drew its noise from default_rng(SeedSequence([seed + 1,
   crc32(device_id)])) with --seed 0 by default, so two runs of one device published byte-identical values (29 of
   29) and anyone on the broker could recompute (for Laplace: subtract) the noise. Now the noise comes from the OS
   CSPRNG: two default runs differ, and the old recomputation no longer matches. The positive control runs the
   same attack against the named simulation mode, where it must still match (so a miss means something), and
   checks that mode is labelled.
6. Health events outside the budget. Before: forecaster hubs published retained alert and review counts computed
   from raw readings. Now nothing a hub publishes carries them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device.ldp import LDPSpec, privatize
from device.sensor import SENSOR_RANGE, stable_seed
from device.traces import write_traces
from federation.clock import DEFAULT_SIM_START
from federation.privacy_rng import SIMULATION_LABEL
from federation.telemetry import decode_batch

DEV = "gw-1-dev001"
N = 29  # 0.1 simulated days of 5-min readings


class Tap:
    """Everything published under wearfed/v1/#, as the broker (or anyone it lets subscribe) sees it."""

    def __init__(self, broker) -> None:  # noqa: ANN001
        self.messages: list[tuple[str, bytes]] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"tap-{time.time_ns()}")
        self.c.on_message = lambda _c, _u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.c.connect(broker.host, broker.port)
        self.c.subscribe("wearfed/v1/#", qos=1)
        self.c.loop_start()
        time.sleep(0.3)

    def close(self) -> None:
        time.sleep(0.5)
        self.c.loop_stop()
        self.c.disconnect()

    def glucose(self) -> dict[int, float]:
        """Released glucose by reading time (the attacker's view)."""
        out = {}
        for topic, payload in self.messages:
            if topic.endswith("/readings"):
                for r in decode_batch(payload).readings:
                    if getattr(r, "stream", "glucose") == "glucose":
                        out[r.t] = r.value
        return out

    def statuses(self) -> list[dict]:
        return [json.loads(p) for t, p in self.messages if t.endswith("/status") and p]


def trace(tmp_path: Path) -> tuple[Path, np.ndarray]:
    cgm = 140 + 60 * np.sin(np.arange(N) / 4.0)
    path = tmp_path / "traces.npz"
    write_traces(path, [DEV], np.arange(N) * 300, cgm[None, :])
    return path, cgm


def run(broker, tmp_path: Path, name: str, *flags: str) -> int:  # noqa: ANN001
    traces, _ = trace(tmp_path)
    cmd = [sys.executable, "-m", "federation.cli", "device", "run", "--device-id", DEV, "--gateway", "gw-1",
           "--broker-port", str(broker.port), "--days", "0.1", "--accel", "3600", "--sim-start",
           str(DEFAULT_SIM_START), "--wall-start", str(time.time() + 0.5), "--sensor-age", "86400", "--traces",
           str(traces), "--state-dir", str(tmp_path / name), *flags]
    with open(tmp_path / f"{name}.log", "wb") as log:
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=120).returncode


def published(broker, tmp_path: Path, name: str, *flags: str) -> tuple[dict[int, float], list[dict]]:  # noqa: ANN001
    tap = Tap(broker)
    try:
        assert run(broker, tmp_path, name, *flags) == 0, (tmp_path / f"{name}.log").read_text()[-2000:]
    finally:
        tap.close()
    values = tap.glucose()
    assert len(values) == N
    return values, tap.statuses()


def old_attack(cgm: np.ndarray, times: list[int], *, mechanism: str, epsilon: float, seed: int = 0) -> dict:
    """What the broker could compute before: the device's noise from the default seed and its id (public)."""
    spec = LDPSpec(mechanism=mechanism, epsilon=epsilon, lo=SENSOR_RANGE[0], hi=SENSOR_RANGE[1])
    guess = privatize(cgm, spec=spec, rng=np.random.default_rng(stable_seed(seed + 1, DEV)))
    return dict(zip(times, guess.tolist(), strict=True))


@pytest.mark.parametrize("mechanism", ["hybrid", "laplace"])
def test_two_default_runs_differ_and_the_noise_cannot_be_recomputed(mosquitto, tmp_path: Path,
                                                                     mechanism: str) -> None:  # noqa: ANN001
    flags = ["--ldp-mechanism", mechanism, "--privacy-unit", "reading", "--ldp-epsilon", "4", "--daily-cap", "2400"]
    first, status = published(mosquitto, tmp_path, "first", *flags)
    second, _ = published(mosquitto, tmp_path, "second", *flags)
    times = sorted(first)
    a, b = np.array([first[t] for t in times]), np.array([second[t] for t in times])
    assert not np.array_equal(a, b) and np.mean(a == b) < 0.5  # before: 29 of 29 byte-identical
    assert status[-1]["privacy_rng"] == "secure"
    _, cgm = trace(tmp_path)
    guess = old_attack(cgm, times, mechanism=mechanism, epsilon=4.0)
    matches = np.mean([guess[t] == first[t] for t in times])
    assert matches < 0.5  # the old recomputation is no better than chance
    if mechanism == "laplace":  # "subtract the noise": exactly the raw reading before, nothing like it now
        recovered = a - (np.array([guess[t] for t in times]) - cgm)
        assert np.abs(recovered - cgm).max() > 20.0

    # positive control: the named simulation mode is reproducible by design, labelled, and falls to the attack
    sim, sim_status = published(mosquitto, tmp_path, "simulation", *flags, "--privacy-rng", "simulation",
                                "--seed", "0")
    assert all(guess[t] == sim[t] for t in times)
    assert sim_status[-1]["privacy_rng"] == SIMULATION_LABEL
    assert SIMULATION_LABEL in (tmp_path / "simulation.log").read_text()


def test_two_runs_with_default_flags_differ(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    """The issue's check as stated: default flags (8 per patient-day, hybrid: two atoms at this epsilon, so half
    the values agree by chance), two runs, different values; before, 29 of 29 were identical."""
    first, status = published(mosquitto, tmp_path, "first")
    second, _ = published(mosquitto, tmp_path, "second")
    a, b = (np.array([r[t] for t in sorted(first)]) for r in (first, second))
    assert not np.array_equal(a, b) and np.mean(a == b) < 0.9  # P(>= 27 of 29 coin flips agree) < 1e-6
    assert status[-1]["privacy_rng"] == "secure" and status[-1]["privacy"]["unit"] == "patient-day"


def test_a_device_refuses_a_seed_outside_simulation_mode(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "federation.cli", "device", "run", "--device-id", DEV, "--gateway",
                          "gw-1", "--seed", "3", "--days", "0.01", "--state-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--privacy-rng simulation" in out.stderr


def test_hub_health_events_stay_on_the_device(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from federation.signing import public_key_b64
    from federation.telemetry import model_topic
    from tests.device.releases import payload, release_doc

    key = Ed25519PrivateKey.generate()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="relay")
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    pub.publish(model_topic("gw-1"), payload(release_doc(key, serial=1)), qos=1, retain=True).wait_for_publish(5)
    pub.loop_stop()
    pub.disconnect()
    cgm = np.array([180.0] * 30 + [max(40.0, 174 - 6 * k) for k in range(26)] + [40.0] * 16)  # a fall into hypo
    traces = tmp_path / "hypo.npz"
    write_traces(traces, [DEV], np.arange(len(cgm)) * 300, cgm[None, :])
    tap = Tap(mosquitto)
    cmd = [sys.executable, "-m", "federation.cli", "device", "run", "--device-id", DEV, "--gateway", "gw-1",
           "--profile", "pi-zero-2w", "--broker-port", str(mosquitto.port), "--days", "0.25", "--accel", "7200",
           "--sim-start", str(DEFAULT_SIM_START), "--wall-start", str(time.time() + 1.5), "--sensor-age", "86400",
           "--traces", str(traces), "--release-key", public_key_b64(key), "--state-dir", str(tmp_path / "hub"),
           "--status-file", str(tmp_path / "hub.json")]
    try:
        assert subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
    finally:
        tap.close()
    local = json.loads((tmp_path / "hub.json").read_text())["per_device"][DEV]
    assert local["model_version"] == 1 and local["alerts"]["forecasts"] > 0  # the hub did forecast, locally
    assert local["alerts"]["hypo_alerts"] + local["alerts"]["hypo_reviews"] >= 1
    for topic, data in tap.messages:  # ... and none of it left the device
        assert b"alerts" not in data and b"hypo" not in data and b"review" not in data, topic
