"""Gateway-side validation: LDP output bounds per mechanism, timestamps, the device registry; never a crash."""

from __future__ import annotations

import math
from pathlib import Path

import cbor2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device.ldp import LDPSpec, privatize
from federation.errors import ConfigError
from federation.telemetry import LDPHeader, Reading, ReadingBatch, encode_batch, readings_topic
from gateway.ingest import handle_message
from gateway.registry import DeviceRegistry
from gateway.store import ReadingStore

EVENT = {"u": "reading"}  # the privacy declaration of an event-level device
NOW = 1_767_225_600 + 86400
DEV = "gw-1-dev001"
TOPIC = readings_topic("gw-1", DEV)


def payload(mech: str, eps: float | None, values: list[float], *, t0: int = 1_767_225_600, seq0: int = 0) -> bytes:
    readings = tuple(Reading(seq=seq0 + i, t=t0 + 300 * i, value=v) for i, v in enumerate(values))
    return encode_batch(ReadingBatch(epoch=1, device=DEV, ldp=LDPHeader(mechanism=mech, epsilon=eps, lo=40.0, hi=400.0),
                                     readings=readings))


@pytest.fixture
def store(tmp_path: Path) -> ReadingStore:
    s = ReadingStore(tmp_path / "r.sqlite")
    yield s
    s.close()


def handle(store: ReadingStore, data: bytes, registry: DeviceRegistry | None = None, topic: str = TOPIC) -> str:
    return handle_message(store, "gw-1", topic, data, registry=registry, now=NOW)


@pytest.mark.parametrize("mech", ["duchi", "piecewise", "hybrid", "laplace"])
@pytest.mark.parametrize("eps", [0.05, 0.5, 2.0, 8.0])
def test_every_real_mechanism_output_is_accepted(store: ReadingStore, mech: str, eps: float) -> None:
    """Outputs of the device's own mechanisms, including extreme ones at tiny epsilon, pass validation."""
    spec = LDPSpec(mechanism=mech, epsilon=eps, lo=40.0, hi=400.0)
    rng = np.random.default_rng(1)
    values = privatize(np.array([40.0, 400.0] * 100), spec=spec, rng=rng)
    for k in range(0, 200, 100):
        assert handle(store, payload(mech, eps, list(values[k:k + 100]), seq0=k)) == "stored"


@pytest.mark.parametrize("mech, eps", [("duchi", 2.0), ("piecewise", 2.0), ("hybrid", 8.0), ("duchi", 0.1)])
def test_values_past_the_mechanism_bound_are_quarantined(store: ReadingStore, mech: str, eps: float) -> None:
    c = 1 / math.tanh(eps / 2 if mech == "duchi" else eps / 4)
    edge = 220.0 + 180.0 * c
    assert handle(store, payload(mech, eps, [edge * (1 - 1e-12)])) == "stored"
    assert handle(store, payload(mech, eps, [edge + 1.0], seq0=1)).startswith("rejected: reading value")
    assert handle(store, payload(mech, eps, [440.0 - edge - 1.0], seq0=2)).startswith("rejected: reading value")


def test_laplace_is_bounded_by_its_clamp_and_raw_mode_is_bounded(store: ReadingStore) -> None:
    """Issue 14 item 5: a Laplace reading of +-1e308 (once accepted as "any finite value") is quarantined."""
    from federation.ldp_range import output_bound

    edge = 220.0 + 180.0 * output_bound(mechanism="laplace", epsilon=0.1)
    assert handle(store, payload("laplace", 0.1, [edge * (1 - 1e-12), 440.0 - edge])) == "stored"
    for k, bad in enumerate((edge + 1.0, 1e12, -1e308, 1e308)):
        assert handle(store, payload("laplace", 0.1, [bad], seq0=10 + k)).startswith("rejected: reading value")
    assert handle(store, payload("none", None, [1500.0], seq0=5)).startswith("rejected")
    assert handle(store, payload("madeup", 1.0, [100.0], seq0=6)).startswith("rejected: LDP mechanism 'madeup'")


def test_timestamps_must_be_plausible_and_ordered(store: ReadingStore) -> None:
    assert handle(store, payload("laplace", 1.0, [1.0], t0=NOW + 31 * 86400)).startswith("rejected: timestamp")
    assert handle(store, payload("laplace", 1.0, [1.0], t0=900_000_000)).startswith("rejected: bad timestamp")
    backwards = cbor2.dumps({"v": 2, "dev": DEV, "e": 1, "p": EVENT,
                             "ldp": {"m": "laplace", "eps": 1.0, "lo": 40, "hi": 400},
                             "r": [[5, 1_767_225_900, 1.0], [4, 1_767_225_600, 1.0]]})
    assert handle(store, backwards).startswith("rejected: readings not in order")
    assert store.counts()["ingested"] == 0 and store.counts()["rejected"] == 3


def test_registry_quarantines_unknown_devices_and_follows_file_changes(store: ReadingStore, tmp_path: Path) -> None:
    path = tmp_path / "devices.txt"
    path.write_text("# gw-1 fleet\nother-device\n")
    registry = DeviceRegistry(path)
    assert handle(store, payload("laplace", 1.0, [1.0]), registry).startswith("rejected: unknown device")
    path.write_text(f"other-device\n{DEV}\n")
    import os

    os.utime(path, ns=(1, 10**18))  # a new mtime even on coarse clocks
    assert handle(store, payload("laplace", 1.0, [1.0]), registry) == "stored"
    assert handle(store, payload("laplace", 1.0, [1.0]), registry) == "duplicate"
    # the same rejected message redelivered is kept once
    handle(store, b"junk", registry)
    handle(store, b"junk", registry)
    assert store.counts()["rejected"] == 2


@pytest.mark.parametrize("text", ["a/b\n", "x" * 65 + "\n", "dev+\n"])
def test_bad_registry_lines_are_config_errors(tmp_path: Path, text: str) -> None:
    (tmp_path / "d.txt").write_text(text)
    with pytest.raises(ConfigError):
        DeviceRegistry(tmp_path / "d.txt")


def test_missing_registry_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unreadable"):
        DeviceRegistry(tmp_path / "absent.txt")


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([TOPIC, "wearfed/v1/gw-1/x/readings", "junk", ""]))
def test_arbitrary_input_is_stored_or_quarantined_never_raised(tmp_path_factory, data: bytes, topic: str) -> None:  # noqa: ANN001
    s = ReadingStore(tmp_path_factory.mktemp("h") / "r.sqlite")
    out = handle(s, data, topic=topic)
    assert out in ("stored", "duplicate") or out.startswith("rejected")
    s.close()
