"""Gateway drift reports (real SQLite store, real HTTP to a real uvicorn cloud) and hospital federated evaluation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from device.sensor import synthetic_trace
from federation.clock import DEFAULT_SIM_START
from federation.errors import SchemaError
from federation.request_auth import ParticipantAuth
from federation.responses import PublicRound
from federation.telemetry import LDPHeader, Reading, ReadingBatch
from federation.windows import windows_from_series
from gateway.cloud_client import CloudClient
from gateway.drift import DriftReporter, DriftSettings
from gateway.hospital import FederatedEvaluator, split_holdout
from gateway.store import ReadingStore
from tests.cloud.participants import ADMIN
from tests.cloud.test_governance import GOOD, _completed_round, _nodes, _staff


@pytest.fixture
def http(cloud) -> Iterator[httpx.Client]:  # noqa: ANN001
    with httpx.Client(base_url=cloud.url, timeout=30) as client:
        yield client

HOUR = 3600


def fill(store: ReadingStore, *, start_h: float, hours: float, mean: float, devices: int = 4, seed: int = 0) -> None:
    """Readings every 5 min for `devices` devices, values ~ N(mean, 40) (as if privatised upstream)."""
    rng = np.random.default_rng(seed)
    times = DEFAULT_SIM_START + int(start_h * HOUR) + np.arange(int(hours * 12)) * 300
    for d in range(devices):
        values = rng.normal(mean, 40, times.size)
        readings = tuple(Reading(seq=int((t - DEFAULT_SIM_START) // 300), t=int(t), value=float(v))
                         for t, v in zip(times, values, strict=True))
        store.add_batch(ReadingBatch(epoch=1, device=f"gw-1-dev{d:03d}", ldp=LDPHeader("hybrid", 8.0, 40.0, 400.0),
                                     readings=readings))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_gateway_drift_reports_raise_an_alert_only_for_shifted_telemetry(cloud, http: httpx.Client,  # noqa: ANN001
                                                                         tmp_path: Path) -> None:
    store = ReadingStore(tmp_path / "gw-1" / "readings.sqlite")
    staff, nodes = _staff(http), _nodes(http)
    settings = DriftSettings(window_s=6 * HOUR, grace_s=HOUR / 2, interval_s=0.1)
    store_path = tmp_path / "gw-1" / "readings.sqlite"
    reporter = DriftReporter("gw-1", nodes[0].key, store_path, tmp_path / "gw-1", settings)

    async def send() -> int:  # a client per event loop (httpx binds its pool to the loop)
        client = CloudClient(cloud.url, attempts=2)
        try:
            return await reporter.send_due(client)
        finally:
            await client.aclose()

    assert asyncio.run(send()) == 0  # an empty store has no complete window
    fill(store, start_h=0, hours=30, mean=140)
    hours = [(int(a - DEFAULT_SIM_START) // HOUR, int(b - DEFAULT_SIM_START) // HOUR) for a, b in reporter.due()]
    assert hours == [(0, 6), (6, 12), (12, 18), (18, 24)]  # [24, 30) waits for readings 30 min past its end
    assert asyncio.run(send()) == 4
    rid, _ = _completed_round(http, nodes, staff["operator"])
    http.post(f"/v1/rounds/{rid}/metrics", json={"metrics": GOOD}, headers=staff["data_scientist"])
    http.post(f"/v1/rounds/{rid}/approve", headers=staff["compliance_officer"])
    assert http.post(f"/v1/rounds/{rid}/promote", headers=ADMIN).status_code == 200

    fill(store, start_h=30, hours=24, mean=140, seed=1)  # day 2: the same distribution
    assert asyncio.run(send()) == 4
    status = http.get("/v1/drift", headers=staff["auditor"]).json()["participants"]["gw-1"]
    assert status["kl_nats"] is not None and status["alert"] is False
    assert http.get("/v1/drift/alerts", headers=staff["auditor"]).json() == []

    restarted = DriftReporter("gw-1", nodes[0].key, store_path, tmp_path / "gw-1", settings)
    assert restarted.next_start == reporter.next_start and restarted.due() == []  # nothing is sent twice
    fill(store, start_h=54, hours=12, mean=260, seed=2)  # day 3: sensors read 120 mg/dL high
    assert asyncio.run(send()) == 2  # [48, 54) (now past its grace) and the shifted [54, 60)
    alerts = http.get("/v1/drift/alerts", headers=staff["auditor"]).json()
    assert [a["participant"] for a in alerts] == ["gw-1"]
    assert alerts[0]["detail"]["t_start"] == DEFAULT_SIM_START + 54 * HOUR
    store.close()


def test_drift_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        DriftReporter("gw-1", None, tmp_path / "x.sqlite", tmp_path, DriftSettings(window_s=0))
    assert DriftReporter("gw-1", None, tmp_path / "x.sqlite", tmp_path).due() == []  # no store yet


def _series(n: int) -> dict:
    return {f"p{k}": synthetic_trace(seed=2, patient=f"p{k}", start=DEFAULT_SIM_START, days=1)[::2] for k in range(n)}


def test_holdout_split() -> None:
    train, held = split_holdout(_series(4), 1)
    assert sorted(train) == ["p0", "p1", "p3"] and sorted(held) == ["p2"]
    train, held = split_holdout({f"p{k}": v for k, v in enumerate(_series(10).values())}, 2)
    assert sorted(held) == ["p2", "p7"] and len(train) == 8  # spread over the ids (age groups), not the last two
    assert split_holdout(_series(2), 0)[1] == {}
    for bad in (2, -1):
        with pytest.raises(SchemaError, match="eval-holdout-patients"):
            split_holdout(_series(2), bad)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_hospital_scores_each_candidate_once_and_posts_only_metrics(cloud, http: httpx.Client,  # noqa: ANN001
                                                                  tmp_path: Path) -> None:
    x, y = windows_from_series(_series(2).values())
    staff, nodes = _staff(http), _nodes(http)
    _, version = _completed_round(http, nodes, staff["operator"])
    view = PublicRound.model_validate(http.get("/v1/rounds/current").json())
    evaluator = FederatedEvaluator("gw-1", nodes[0].key, x, y, tmp_path)

    async def run(rnd: PublicRound, who: FederatedEvaluator = evaluator) -> None:
        client = CloudClient(cloud.url, attempts=2, auth=ParticipantAuth(who.key, who.participant_id))
        try:
            await who(rnd, client)
        finally:
            await client.aclose()

    collecting = view.model_copy(update={"state": "collecting", "result_model_version": None})
    asyncio.run(run(collecting))  # nothing to score yet
    assert evaluator.done == {}
    asyncio.run(run(view))
    assert evaluator.done == {str(version): "posted"}
    asyncio.run(run(view))  # remembered: not scored twice
    ev = http.get(f"/v1/models/{version}/evaluations", headers=staff["auditor"]).json()
    reports = [r for r in ev["reports"] if r["source"] == "federated"]
    assert [r["reporter"] for r in reports] == ["gw-1"]
    m = reports[0]["metrics"]
    assert m["n_windows"] == len(x) and m["rmse30"] > 0 and 0 <= m["clarke_ab30"] <= 1
    assert set(m) <= {"n_windows", "rmse30", "rmse60", "mae30", "mae60", "clarke_ab30", "clarke_ab60",
                      "hypo_events30", "hypo_events60", "hypo_sens30", "hypo_sens60"}  # scores only
    again = FederatedEvaluator("gw-1", nodes[0].key, x, y, tmp_path)
    assert again.done == {str(version): "posted"}  # survives a restart
    stranger = FederatedEvaluator("gw-9", nodes[0].key, x, y, tmp_path / "other")
    asyncio.run(run(view, stranger))
    assert stranger.done[str(version)].startswith("rejected: participant gw-9 is not enrolled")
