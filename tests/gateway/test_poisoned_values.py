"""Issue 14 item 5 against a real `wearfed gateway ingest` and Mosquitto: values a device's mechanism can never emit
(+-1e308 "Laplace" outputs, a self-declared clip range of +-1e308, epsilon 1e-300) are quarantined with a reason,
and DP-SGD on what the gateway stored stays finite.

Before the fix all three were stored; one +-1e308 reading in a device's series made every DP-SGD weight NaN (and
the node refused every later round).
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np

from federation import model
from federation.privacy_rng import PrivacyRNG
from federation.telemetry import LDPHeader, Reading, ReadingBatch, encode_batch
from federation.windows import windows_from_series
from gateway.store import ReadingStore
from tests.gateway.test_ingest_crash import publisher, start_gateway, status, wait
from tests.gateway.test_ingest_poison import T0, publish, quarantine_reasons

DEV = "gw-1-dev001"


def one(seq: int, value: float, *, eps: float = 1.0, lo: float = 40.0, hi: float = 400.0) -> bytes:
    header = LDPHeader(mechanism="laplace", epsilon=eps, lo=lo, hi=hi)
    return encode_batch(ReadingBatch(epoch=1, device=DEV, ldp=header, readings=(Reading(seq, T0 + 300 * 20, value),)))


def test_out_of_range_values_are_quarantined_and_dp_sgd_stays_finite(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    from gateway.trainer import DPConfig, train_dp

    state = tmp_path / "gw-1"
    state.mkdir()
    devices = tmp_path / "devices.txt"
    devices.write_text(f"{DEV}\n")
    gw = start_gateway(mosquitto, state, devices)
    pub = publisher(mosquitto)
    try:
        wait(lambda: status(state).get("subscribed"), "the gateway to subscribe")
        header = LDPHeader(mechanism="laplace", epsilon=8.0, lo=40.0, hi=400.0)
        rows = tuple(Reading(s, T0 + 300 * s, 120.0 + 10 * np.sin(s / 5)) for s in range(60))
        publish(pub, DEV, encode_batch(ReadingBatch(epoch=1, device=DEV, ldp=header, readings=rows)))
        publish(pub, DEV, one(100, 1e308))
        publish(pub, DEV, one(101, -1e308))
        publish(pub, DEV, one(102, 130.0, lo=-1e308, hi=1e308))
        publish(pub, DEV, one(103, 130.0, eps=1e-300))
        wait(lambda: status(state).get("ingested", 0) + status(state).get("rejected", 0) >= 64, "every message")
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(timeout=15) == 0
    finally:
        pub.loop_stop()
        pub.disconnect()
        if gw.poll() is None:
            gw.kill()
            gw.wait()
    assert status(state)["ingested"] == 60 and status(state)["rejected"] == 4
    reasons = quarantine_reasons(state)
    assert sum("reading value" in r and "outside" in r for r in reasons) == 2
    assert any("clip range" in r and "sensor range" in r for r in reasons)
    assert any("epsilon 1e-300" in r and "policy" in r for r in reasons)

    store = ReadingStore(state / "readings.sqlite")
    x, y = windows_from_series([(s.times, s.glucose) for s in store.series().values()])
    store.close()
    assert len(x) > 0 and np.isfinite(x).all() and np.isfinite(y).all()
    result = train_dp(model.init_weights(seed=0), x, y, cfg=DPConfig(expected_batch_size=8, unit="window"), epochs=1,
                      rng=PrivacyRNG.simulation(0))  # bare windows: the record-level unit, seeded (a test)
    assert np.isfinite(result.weights).all() and np.isfinite(result.loss)
