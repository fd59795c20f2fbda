"""`wearfed model list|show|card|rollback` as a real subprocess against a real uvicorn server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.cloud.participants import open_round, random_delta, wait_state
from tests.cloud.test_governance import GOOD, _nodes, _staff


def wearfed(url: str, token: str | None, *args: str) -> subprocess.CompletedProcess:
    env_args = ["--url", url] + (["--token", token] if token else [])
    cmd = [sys.executable, "-m", "federation.cli", "model", args[0], *env_args, *args[1:]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _promote_round(http: httpx.Client, staff: dict, nodes: list, seed: int, rmse: float) -> int:
    base = http.get("/v1/models/promoted").json()["version"]
    rid = open_round(http, headers=staff["operator"])
    for i, n in enumerate(nodes):
        body = n.submission(rid, random_delta(seed + i), n_samples=20, base_version=base)
        assert n.submit(rid, body).status_code == 200
    version = wait_state(http, rid, ("completed",))["result_model_version"]
    http.post(f"/v1/rounds/{rid}/metrics", json={"metrics": {**GOOD, "rmse30": rmse}}, headers=staff["data_scientist"])
    assert http.post(f"/v1/rounds/{rid}/approve", headers=staff["compliance_officer"]).status_code == 200
    assert http.post(f"/v1/rounds/{rid}/promote", headers=staff["admin"]).status_code == 200
    return version


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_rollback_list_show_and_card_from_the_cli(cloud, http: httpx.Client, tmp_path: Path) -> None:  # noqa: ANN001
    staff, nodes = _staff(http), _nodes(http)
    v1 = _promote_round(http, staff, nodes, 0, 20.0)
    v2 = _promote_round(http, staff, nodes, 10, 20.5)
    operator = staff["operator"]["Authorization"].removeprefix("Bearer ")
    auditor = staff["auditor"]["Authorization"].removeprefix("Bearer ")

    listed = wearfed(cloud.url, operator, "list")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert [(int(r[0]), r[1]) for r in rows] == [(0, "retired"), (v1, "retired"), (v2, "promoted")]

    shown = wearfed(cloud.url, auditor, "show", str(v2))
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["version"] == v2 and "weights" not in doc and doc["metrics_by_source"]["posted"]["rmse30"] == 20.5

    out = tmp_path / "card.md"
    card = wearfed(cloud.url, auditor, "card", str(v2), "--out", str(out))
    assert card.returncode == 0 and f"# Model card: wearfed forecaster v{v2}" in out.read_text()
    as_json = wearfed(cloud.url, auditor, "card", str(v2), "--format", "json")
    assert json.loads(as_json.stdout)["lineage"]["parent_versions"] == [v1, 0]

    # an auditor may not roll back; no token at all is refused before any request
    denied = wearfed(cloud.url, auditor, "rollback", "--reason", "test")
    assert denied.returncode == 2 and "403" in denied.stderr and "model.rollback" in denied.stderr
    assert wearfed(cloud.url, None, "rollback", "--reason", "x").returncode != 0
    assert http.get("/v1/models/promoted").json()["version"] == v2

    back = wearfed(cloud.url, operator, "rollback", "--reason", "hypo alerts on devices")
    assert back.returncode == 0, back.stderr
    assert f"v{v2} withdrawn, v{v1} is production again" in back.stdout
    assert http.get("/v1/models/promoted").json()["version"] == v1
    assert http.get("/v1/releases/current").json()["manifest"]["version"] == v1  # devices get v1 again
    entries = http.get("/v1/audit/entries", headers=staff["auditor"], params={"limit": 10_000}).json()
    rolled = [e for e in entries if e["kind"] == "model.rolled_back"]
    assert rolled[-1]["actor"] == "operator-1" and rolled[-1]["detail"]["reason"] == "hypo alerts on devices"
    assert rolled[-1]["detail"] == {"from_version": v2, "to_version": v1, "reason": "hypo alerts on devices"}

    again = wearfed(cloud.url, operator, "rollback", "--reason", "again")
    assert again.returncode == 2 and "one step" in again.stderr
    gone = wearfed("http://127.0.0.1:9", operator, "list")
    assert gone.returncode == 2 and "cannot reach" in gone.stderr
