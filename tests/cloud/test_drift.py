"""Drift: histogram and KL math (pinned values), and the cloud's drift API over real HTTP."""

from __future__ import annotations

import math

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.drift import DEFAULT_THRESHOLD, covered_seconds
from federation.drift import BIN_EDGES, N_BINS, histogram, kl_divergence
from federation.errors import SchemaError
from tests.cloud.governance_helpers import drift_report, glucose
from tests.cloud.participants import FakeNode, assert_reason
from tests.cloud.test_governance import GOOD, _completed_round, _nodes, _staff


def test_histogram_bins_and_clipping() -> None:
    assert N_BINS == 18 and BIN_EDGES[0] == 40 and BIN_EDGES[-1] == 400 and np.allclose(np.diff(BIN_EDGES), 20)
    counts = histogram([-30.0, 39.9, 40.0, 59.99, 60.0, 399.0, 400.0, 1200.0, float("nan"), float("inf")])
    assert counts[0] == 4 and counts[1] == 1 and counts[-1] == 3 and sum(counts) == 8


def test_kl_pinned_values() -> None:
    same = histogram(np.linspace(40, 400, 1000))
    assert kl_divergence(same, same) == 0.0
    # all of `recent` in bin 0, all of `reference` in bin 1, n = 10, alpha 0.5: (10/19) ln 21
    a, b = [10] + [0] * 17, [0, 10] + [0] * 16
    assert kl_divergence(a, b) == pytest.approx(10 / 19 * math.log(21), rel=1e-12)
    assert kl_divergence(a, b, alpha=1.0) == pytest.approx(10 / 28 * math.log(11), rel=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(50):  # Gibbs' inequality, on arbitrary counts
        p, q = rng.integers(0, 50, N_BINS).tolist(), rng.integers(0, 50, N_BINS).tolist()
        assert kl_divergence(p, q) >= 0


def test_kl_separates_a_shift_from_resampling() -> None:
    ref = histogram(glucose(20_000, mean=150, seed=1))
    assert kl_divergence(histogram(glucose(2000, mean=150, seed=2)), ref) < 0.05
    assert kl_divergence(histogram(glucose(2000, mean=250, seed=3)), ref) > DEFAULT_THRESHOLD


@pytest.mark.parametrize("bad", [[1] * 17, [1] * 19, [-1] + [1] * 17, [0.5] * 18])
def test_malformed_counts_are_refused(bad: list) -> None:
    with pytest.raises(SchemaError):
        kl_divergence(bad, [1] * 18)
    with pytest.raises(ValueError, match="alpha"):
        kl_divergence([1] * 18, [1] * 18, alpha=0)


def _kinds(http: httpx.Client, staff: dict) -> list[dict]:
    return http.get("/v1/audit/entries", headers=staff["auditor"], params={"limit": 10_000}).json()


@pytest.mark.parametrize("db_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_shifted_telemetry_raises_one_alert_and_same_distribution_does_not(http: httpx.Client) -> None:
    staff, nodes = _staff(http), _nodes(http)
    post = lambda body: http.post("/v1/drift/reports", json=body)  # noqa: E731
    for i, n in enumerate(nodes):  # training-time telemetry, before the round: one day in 6-h windows
        for w in range(4):
            body = drift_report(n, glucose(750, mean=140, seed=10 * i + w), t_start=w * 21600.0,
                                t_end=(w + 1) * 21600.0)
            assert post(body).json()["kl_nats"] is None
    rid, version = _completed_round(http, nodes, staff["operator"])
    assert any(e["kind"] == "drift.baseline" and e["detail"]["readings"] == 9000 for e in _kinds(http, staff))
    same = post(drift_report(nodes[0], glucose(1500, mean=140, seed=7), t_start=86400.0, t_end=108000.0)).json()
    assert same["kl_nats"] is None  # the promoted model (v0) was trained on no reported telemetry yet
    http.post(f"/v1/rounds/{rid}/metrics", json={"metrics": GOOD}, headers=staff["data_scientist"])
    http.post(f"/v1/rounds/{rid}/approve", headers=staff["compliance_officer"])
    assert http.post(f"/v1/rounds/{rid}/promote", headers=staff["admin"]).status_code == 200
    # the report that waited for a reference is scored at the promotion (the faults replay never scored any: under
    # load every report arrived before the first promoted model)
    waited = http.get("/v1/drift", headers=staff["auditor"]).json()["participants"]["gw-1"]
    assert waited["scored_reports"] == 1 and 0 <= waited["scored_kl_nats"] < 0.1 and waited["alert"] is False

    same = post(drift_report(nodes[0], glucose(1500, mean=140, seed=8), t_start=1e5, t_end=1.2e5)).json()
    assert same["alert"] is False and 0 <= same["kl_nats"] < 0.1 and same["reference_version"] == version
    shifted = drift_report(nodes[1], glucose(1500, mean=260, seed=9), t_start=1e5, t_end=1.2e5)
    out = post(shifted).json()
    assert out["alert"] is True and out["kl_nats"] > DEFAULT_THRESHOLD
    assert post(shifted).json()["status"] == "duplicate"  # a resend is counted once
    again = post(drift_report(nodes[1], glucose(1500, mean=270, seed=10), t_start=1.2e5, t_end=1.4e5)).json()
    assert again["alert"] is True
    alerts = http.get("/v1/drift/alerts", headers=staff["operator"]).json()
    assert [a["participant"] for a in alerts] == ["gw-2"]  # one alert per excursion, not per report
    assert alerts[0]["detail"]["threshold_nats"] == DEFAULT_THRESHOLD and alerts[0]["detail"]["readings"] == 1500
    back = post(drift_report(nodes[1], glucose(1500, mean=140, seed=11), t_start=1.4e5, t_end=1.6e5)).json()
    assert back["alert"] is False
    kinds = [e["kind"] for e in _kinds(http, staff)]
    assert kinds.count("drift.alert") == 1 and kinds.count("drift.cleared") == 1
    status = http.get("/v1/drift", headers=staff["auditor"]).json()
    assert status["threshold_nats"] == DEFAULT_THRESHOLD
    assert status["participants"]["gw-2"]["alert"] is False and status["participants"]["gw-2"]["reports"] == 7
    few = post(drift_report(nodes[0], glucose(50, mean=300, seed=12), t_start=0.0, t_end=1.0)).json()
    assert few["kl_nats"] is None and few["alert"] is False  # below min_readings: stored, not scored
    gw1 = http.get("/v1/drift", headers=staff["auditor"]).json()["participants"]["gw-1"]
    # the latest report was not scored; the latest scored one stays readable (the report's "latest KL")
    assert gw1["kl_nats"] is None and gw1["reports"] == 7 and gw1["scored_reports"] == 2
    assert gw1["scored_kl_nats"] == pytest.approx(same["kl_nats"], abs=1e-6) and gw1["scored_t_end"] == 1.2e5


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_reference_shorter_than_a_day_is_not_scored(http: httpx.Client) -> None:
    staff, nodes = _staff(http), _nodes(http)
    for i, n in enumerate(nodes):  # only the first night before the round
        http.post("/v1/drift/reports", json=drift_report(n, glucose(1000, mean=120, seed=i), t_end=21600.0))
    rid, _ = _completed_round(http, nodes, staff["operator"])
    http.post(f"/v1/rounds/{rid}/metrics", json={"metrics": GOOD}, headers=staff["data_scientist"])
    http.post(f"/v1/rounds/{rid}/approve", headers=staff["compliance_officer"])
    assert http.post(f"/v1/rounds/{rid}/promote", headers=staff["admin"]).status_code == 200
    out = http.post("/v1/drift/reports", json=drift_report(nodes[0], glucose(1000, mean=300), t_start=21600.0,
                                                          t_end=43200.0)).json()
    assert out["kl_nats"] is None and out["alert"] is False
    assert http.get("/v1/drift", headers=staff["auditor"]).json()["min_reference_hours"] == 24.0


def test_covered_seconds() -> None:
    assert covered_seconds([]) == 0
    assert covered_seconds([(0, 10), (5, 15), (20, 30), (0, 10)]) == 25
    assert covered_seconds([(20, 30), (0, 40)]) == 40


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_drift_reports_are_authenticated_and_validated(http: httpx.Client) -> None:
    nodes = _nodes(http)
    body = drift_report(nodes[0], glucose(500, mean=150))
    forged = {**body, "counts": [c + 1 for c in body["counts"]]}
    assert_reason(http.post("/v1/drift/reports", json=forged), 401, "signature")
    other_key = drift_report(nodes[0], glucose(500, mean=150), key=Ed25519PrivateKey.generate())
    assert_reason(http.post("/v1/drift/reports", json=other_key), 401, "signature")
    stranger = FakeNode(http, "gw-9", token="unused")
    assert_reason(http.post("/v1/drift/reports", json=drift_report(stranger, glucose(500, mean=150))), 403,
                  "not enrolled")
    backwards = drift_report(nodes[0], glucose(500, mean=150), t_start=10.0, t_end=5.0)
    assert_reason(http.post("/v1/drift/reports", json=backwards), 400, "before t_start")
    short = {**body, "counts": body["counts"][:-1]}
    assert http.post("/v1/drift/reports", json=short).status_code == 422
    assert http.post("/v1/drift/reports", json=body).json()["status"] == "recorded"
    reused = drift_report(nodes[0], glucose(500, mean=200), report_id=body["report_id"])
    assert_reason(http.post("/v1/drift/reports", json=reused), 409, "other content")
