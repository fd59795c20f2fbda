"""`wearfed hospital pool`: several hospital participants in one real process against the real aggregator."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from device.sensor import synthetic_trace
from federation.errors import ConfigError
from federation.status import HospitalStatus
from gateway.hospital import write_clinical_csv
from gateway.pool import load_pool_spec
from gateway.state import NodeState
from sim.processes import wait_until
from tests.conftest import ADMIN_TOKEN, ENROLL_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def write_spec(tmp_path: Path, ids: list[str]) -> Path:
    nodes = []
    for k, pid in enumerate(ids):
        patients = {}
        for j in range(k + 1):  # node k has k + 1 patients
            t, _bg, cgm = synthetic_trace(seed=4, patient=f"{pid}-p{j}", start=1_767_225_600, days=0.5)
            patients[f"{pid}-p{j}"] = (t, cgm)
        (tmp_path / pid).mkdir()
        write_clinical_csv(tmp_path / pid / "clinical.csv", patients)
        nodes.append({"id": pid, "data": f"{pid}/clinical.csv", "state_dir": pid, "enroll_token": ENROLL_TOKEN})
    spec = tmp_path / "pool.json"
    spec.write_text(json.dumps({"nodes": nodes}))
    return spec


@pytest.mark.parametrize(("doc", "message"), [
    ("not json", "cannot read the pool spec"),
    ('{"nodes": []}', "'nodes' must be a non-empty list"),
    ('{"nodes": [{"id": "h-1", "data": "a.csv"}]}', "nodes[0] is missing state_dir"),
    ('{"nodes": [{"id": "h-1", "data": "a", "state_dir": "a"}, {"id": "h-1", "data": "b", "state_dir": "b"}]}',
     "nodes[1].id 'h-1' is repeated"),
])
def test_bad_spec_is_refused_naming_the_entry(tmp_path: Path, doc: str, message: str) -> None:
    spec = tmp_path / "pool.json"
    spec.write_text(doc)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_pool_spec(spec)


def test_pool_nodes_answer_a_round_as_distinct_participants(cloud, tmp_path: Path) -> None:  # noqa: ANN001
    ids = ["h-001", "h-002", "h-003"]
    spec = write_spec(tmp_path, ids)
    proc = subprocess.Popen([sys.executable, "-m", "federation.cli", "hospital", "pool", "--spec", str(spec),
                             "--cloud-url", cloud.url, "--accountant", "rdp", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with httpx.Client(base_url=cloud.url, headers=ADMIN, timeout=30) as http:
            def enrolled() -> bool:
                assert proc.poll() is None, proc.communicate()[0]
                return {p["id"] for p in http.get("/v1/participants").json()} == set(ids)

            wait_until(enrolled, timeout=60, what="the pool's nodes to enroll")
            rnd = http.post("/v1/rounds", json={"quorum": 3, "deadline_s": 120}).json()

            def closed() -> bool:
                assert proc.poll() is None, proc.communicate()[0]
                return http.get(f"/v1/rounds/{rnd['round']}").json()["state"] in ("completed", "failed")

            wait_until(closed, timeout=120, what="the round to close")
            report = http.get(f"/v1/rounds/{rnd['round']}").json()
            posts = {line.split('route="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                     for line in http.get("/metrics").text.splitlines()
                     if line.startswith('wearfed_cloud_http_requests_total{method="POST"') and 'status="200"' in line}
        # the nodes' secure-aggregation answers travel together: a view batch and a message batch per phase, and a
        # view batch for masking (a node still submitting its input when the others sign the view answers in a batch
        # or alone after them)
        assert posts.get("/v1/rounds/{round_id}/secagg/batch", 0) >= 4, posts
        assert posts.get("/v1/rounds/{round_id}/secagg/views", 0) >= 5, posts
        assert not {"/v1/rounds/{round_id}/secagg/keys", "/v1/rounds/{round_id}/secagg/shares"} & set(posts), posts
        assert posts.get("/v1/log/witness/batch", 0) >= 1, posts  # the nodes' acknowledgements of the audit log
        assert report["state"] == "completed"
        assert sorted(u["participant"] for u in report["updates"]) == ids
        keys = {json.loads((tmp_path / pid / "enrolled.json").read_text())["public_key"] for pid in ids}
        assert len(keys) == 3  # each node enrolled and signs with its own key
        units = {u["participant"]: u["n_samples"] for u in report["updates"]}
        assert units == {"h-001": 1, "h-002": 2, "h-003": 3}  # each trained on its own patients

        # a patient of h-003 withdraws: the pool rebuilds that node's windows, reports the counts under h-003's key,
        # and the next round trains h-003 on its two other patients
        withdraw = subprocess.run([sys.executable, "-m", "federation.cli", "hospital", "withdraw", "--state-dir",
                                   str(tmp_path / "h-003"), "--data", str(tmp_path / "h-003" / "clinical.csv"),
                                   "--patient", "h-003-p0"], capture_output=True, text=True, timeout=120)
        assert withdraw.returncode == 0, withdraw.stderr

        def reported() -> bool:
            status = json.loads((tmp_path / "h-003" / "status.json").read_text())
            return status["withdrawn_patients"] == 1 and status["consent_reports_pending"] == 0

        wait_until(reported, timeout=60, what="h-003 to rebuild its windows and report the withdrawal")
        (entry,) = [e for e in cloud.audit_entries() if e["kind"] == "consent.withdrawal"]
        assert entry["actor"] == "h-003" and "h-003-p0" not in json.dumps(entry)  # counts and a pseudonym only
        with httpx.Client(base_url=cloud.url, headers=ADMIN, timeout=30) as http:
            second = http.post("/v1/rounds", json={"quorum": 3, "deadline_s": 120}).json()["round"]
            wait_until(lambda: http.get(f"/v1/rounds/{second}").json()["state"] in ("completed", "failed"),
                       timeout=120, what="the second round to close")
            again = http.get(f"/v1/rounds/{second}").json()
        assert {u["participant"]: u["n_samples"] for u in again["updates"]} == {"h-001": 1, "h-002": 2, "h-003": 2}
        assert {u["dp"]["unit"] for u in report["updates"]} == {"patient"}
        for pid in ids:
            assert len(NodeState.load(tmp_path / pid / "node-state.json").steps()) == 2  # two rounds, each booked once
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        for pid in ids:
            status = HospitalStatus.model_validate_json((tmp_path / pid / "status.json").read_text())
            assert status.pool_pid == proc.pid and status.pid is None
            assert status.enrolled and status.answered[str(rnd["round"])] == "submitted"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
