"""Defect 13, the document half (issue 14): the OpenAPI document lists every status each route answers, with the one
error schema the API really uses, and no input makes the server fail.

Schemathesis (its `st run` command line, the maintained OpenAPI fuzzer) generates requests for every operation of
the live document against a real uvicorn cloud: coverage-phase boundary values and fuzzed inputs, at most
`MAX_EXAMPLES` per operation, a fixed seed. Checks: no 5xx, every status documented, every body (4xx included)
matching its documented schema and content type, schema-invalid input rejected. Once as an admin (every operation),
once as a compliance officer (the operations only that role may call).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cloud.dashboard.feed import ChangeFeed
from tests.cloud.participants import ADMIN, create_user

MAX_EXAMPLES = 5
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
          "negative_data_rejection")


def _st(url: str, token: str, report: Path, *extra: str) -> dict:
    cmd = [str(Path(sys.executable).with_name("st")), "run", f"{url}/openapi.json", "-n", str(MAX_EXAMPLES),
           "--phases", "examples,coverage,fuzzing", "-c", CHECKS, "-H", f"Authorization: Bearer {token}",
           "--seed", "14", "-w", "1", "--no-color", "--generation-database", "none", "--report", "json",
           "--report-json-path", str(report), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=report.parent)  # no cache in the repo
    assert report.exists(), out.stdout[-3000:] + out.stderr[-2000:]
    doc = json.loads(report.read_text())
    print(f"\nschemathesis ({' '.join(extra) or 'all operations'}): operations {doc['operations']}, "
          f"test cases {doc['test_cases']}, failures {doc['failures']}, errors {doc['errors']}")
    assert doc["failures"] == [] and doc["errors"] == [], out.stdout[-6000:]
    return doc


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_every_operation_fuzzed_without_a_server_error_or_an_undocumented_answer(cloud, tmp_path: Path) -> None:  # noqa: ANN001
    core = cloud.app.state.cloud  # the event stream ends after 1 s instead of 20: a fuzzer reads each to its end
    cloud.app.state.dashboard_feed = ChangeFeed(core.store, core.access, lifetime_s=1.0)
    with httpx.Client(base_url=cloud.url, timeout=30) as http:
        spec = http.get("/openapi.json").json()
        compliance = create_user(http, "carol", "compliance_officer")["Authorization"].removeprefix("Bearer ")
    operations = sum(len(ops) for ops in spec["paths"].values())
    for ops in spec["paths"].values():
        for op in ops.values():
            assert {"413", "422", "429"} <= set(op["responses"])
            for status, resp in op["responses"].items():
                if status.startswith("4"):
                    assert resp["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    doc = _st(cloud.url, ADMIN["Authorization"].removeprefix("Bearer "), tmp_path / "admin.json")
    assert doc["operations"]["tested"] == doc["operations"]["total"] == operations
    _st(cloud.url, compliance, tmp_path / "compliance.json",
        "--include-path-regex", r"^/v1/(audit|privacy)/|/(approve|reject)$")
