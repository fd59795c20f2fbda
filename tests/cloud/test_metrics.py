"""Prometheus metrics: the cloud's ``GET /metrics`` (behind ``metrics.read``) after a real round over real HTTP, and a
gateway's ``--metrics-port`` (prometheus-client's own server) while it ingests from a real Mosquitto."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from cloud.metrics import refusal_class
from gateway.metrics import reason_class
from tests.cloud.participants import ADMIN, COMPLIANCE, create_user, open_round, random_delta, run_round
from tests.gateway.test_ingest import batch

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, from a text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


@SQLITE
def test_cloud_metrics_need_their_permission(cloud, http) -> None:  # noqa: ANN001
    monitor = create_user(http, "prometheus", "monitor")
    auditor = create_user(http, "auditor-1", "auditor")
    assert http.get("/metrics").status_code == 401
    assert http.get("/metrics", headers={"Authorization": "Bearer wf_forged"}).status_code == 401
    assert http.get("/metrics", headers=auditor).status_code == 403
    assert http.get("/metrics", headers=COMPLIANCE).status_code == 403
    ok = http.get("/metrics", headers=monitor)
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert http.get("/metrics", headers=ADMIN).status_code == 200
    # the scraper's identity may read nothing else
    for path in ("/v1/participants", "/v1/rounds/1", "/v1/audit/entries", "/v1/dashboard/session"):
        assert http.get(path, headers=monitor).status_code == 403, path


@SQLITE
def test_cloud_metrics_after_a_round(cloud, http, nodes) -> None:  # noqa: ANN001
    monitor = create_user(http, "prometheus", "monitor")
    run_round(http, nodes)
    rid = open_round(http)  # a second round: one participant is refused, for a stale base model
    stale = nodes[0].submit(rid, nodes[0].submission(rid, random_delta(7), n_samples=30, base_version=99))
    assert stale.status_code == 409
    http.get("/v1/participants", headers={"Authorization": "Bearer wf_wrong"})  # an authentication failure
    http.get("/v1/privacy/ledger", headers=ADMIN)  # an authorisation failure (admins do not read the ledger)
    found = samples(http.get("/metrics", headers=monitor).text)

    assert value(found, "wearfed_cloud_submissions_accepted_total") == 3
    assert value(found, "wearfed_cloud_submissions_refused_total", reason="stale_base_model", status="409") == 1
    assert value(found, "wearfed_cloud_round_duration_seconds_count", outcome="completed") == 1
    entries = cloud.audit_entries()  # the duration is the ledger's open-to-completed time of round 1
    opened = next(e["at"] for e in entries if e["kind"] == "round.opened" and e["detail"].get("round") == 1)
    done = next(e["at"] for e in entries if e["kind"] == "round.state" and e["detail"].get("round") == 1
                and e["detail"].get("state") == "completed")
    took = (datetime.fromisoformat(done) - datetime.fromisoformat(opened)).total_seconds()
    assert took > 0
    assert value(found, "wearfed_cloud_round_duration_seconds_sum", outcome="completed") == pytest.approx(took)
    assert value(found, "wearfed_cloud_rounds", state="completed") == 1
    assert value(found, "wearfed_cloud_rounds", state="collecting") == 1
    ledger = {a["participant"]: a for a in http.get("/v1/privacy/ledger", headers=COMPLIANCE).json()}
    for pid, account in ledger.items():
        e = account["entries"][-1]
        labels = {"participant": pid, "unit": "window", "delta": repr(e["delta"]), "accountant": e["accountant"]}
        assert value(found, "wearfed_cloud_participant_epsilon", **labels) == pytest.approx(account["epsilon_spent"])
        assert value(found, "wearfed_cloud_participant_halted", participant=pid) == 0
    assert value(found, "wearfed_cloud_auth_failures_total", status="401") >= 1
    assert value(found, "wearfed_cloud_auth_failures_total", status="403") >= 1
    route = "/v1/rounds/{round_id}/updates"
    assert value(found, "wearfed_cloud_http_requests_total", method="POST", route=route, status="200") == 3
    assert value(found, "wearfed_cloud_http_request_duration_seconds_count", method="POST", route=route) == 4
    assert value(found, "wearfed_cloud_http_requests_total", method="GET", route="unmatched", status="404") == 0
    http.get("/no/such/path/123")
    again = samples(http.get("/metrics", headers=monitor).text)
    assert value(again, "wearfed_cloud_http_requests_total", method="GET", route="unmatched", status="404") == 1
    # counted once: a second scrape does not count the ledger again
    assert value(again, "wearfed_cloud_submissions_accepted_total") == 3
    assert value(again, "wearfed_cloud_audit_entries") == len(cloud.audit_entries())


def test_refusal_and_quarantine_reasons_are_classes() -> None:
    assert refusal_class("privacy cap: cumulative epsilon 4.2 would pass the cap 4.0") == "privacy_cap"
    assert refusal_class("update is based on model 99, round 2 trains model 1") == "stale_base_model"
    assert refusal_class("round 3 is not collecting (state: completed); the submission is late") == "late"
    assert refusal_class("something new") == "other"
    assert reason_class("unknown device 'x' (not in the gateway's device registry)") == "unknown_device"
    assert reason_class("payload device 'a' does not match topic device 'b'") == "topic_mismatch"
    assert reason_class("not CBOR: ...") == "schema"


def _publish(port: int, topic: str, payloads: list[bytes]) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gw-1-dev001")
    c.connect("127.0.0.1", port)
    c.loop_start()
    for p in payloads:
        c.publish(topic, p, qos=1).wait_for_publish(10)
    c.loop_stop()
    c.disconnect()


def test_gateway_metrics_port(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    from federation.telemetry import readings_topic

    state = tmp_path / "gw-1"
    devices = tmp_path / "devices.txt"
    devices.write_text("gw-1-dev001\n")
    log = open(tmp_path / "gw.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "federation.cli", "gateway", "ingest", "--id", "gw-1",
                             "--state-dir", str(state), "--broker-port", str(mosquitto.port), "--devices-file",
                             str(devices), "--metrics-port", "0", "--log-level", "warning"],
                            stdout=log, stderr=log)
    try:
        deadline = time.time() + 30
        while not (state / "metrics.json").exists() or not json.loads(
                (state / "status.json").read_text() if (state / "status.json").exists() else "{}").get("subscribed"):
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "gw.log").read_text()
            time.sleep(0.1)
        port = json.loads((state / "metrics.json").read_text())["port"]
        topic = readings_topic("gw-1", "gw-1-dev001")
        _publish(mosquitto.port, topic, [batch("gw-1-dev001", range(0, 5)), batch("gw-1-dev001", range(3, 8)),
                                         b"\xff not cbor", batch("gw-1-dev002", range(0, 2))])
        url = f"http://127.0.0.1:{port}/metrics"
        found: dict = {}
        while time.time() < deadline + 30:
            found = samples(httpx.get(url, timeout=30).text)
            if value(found, "wearfed_gateway_readings_ingested_total", gateway="gw-1") == 8 and sum(
                    v for (n, _l), v in found.items() if n == "wearfed_gateway_messages_quarantined_total") == 2:
                break
            time.sleep(0.2)
        assert value(found, "wearfed_gateway_readings_ingested_total", gateway="gw-1") == 8
        assert value(found, "wearfed_gateway_readings_deduplicated_total", gateway="gw-1") == 2
        assert value(found, "wearfed_gateway_messages_quarantined_total", gateway="gw-1", reason="schema") == 1
        assert value(found, "wearfed_gateway_messages_quarantined_total", gateway="gw-1", reason="topic_mismatch") == 1
        assert value(found, "wearfed_gateway_ingest_subscribed", gateway="gw-1") == 1
        # gauges read from the same status the daemon writes, and the store itself
        assert value(found, "wearfed_gateway_readings_stored", gateway="gw-1") == 8
        assert value(found, "wearfed_gateway_quarantine_depth", gateway="gw-1") == 2
        with sqlite3.connect(state / "readings.sqlite") as db:
            assert db.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 8
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
