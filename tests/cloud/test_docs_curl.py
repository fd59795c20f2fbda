"""Issue 16: the docs' curl calls run as written (only the host replaced) against a real `wearfed cloud serve` over
https with a certificate from `wearfed provision`, as docs/cloud.md "Serving https" says; `cloud unseal` reads
piped shares to the end of input and exits 0 once its shares are accepted; `wearfed model evaluate` scores a
version on a hospital-format file."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from cloud import custody
from federation import cli
from federation.tls import tls_context
from tests.cloud.participants import FakeNode
from tests.cloud.server import ServerProcess
from tests.conftest import ADMIN_TOKEN, COMPLIANCE_TOKEN

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("docs/cloud.md", "docs/dashboard.md", "README.md")
HOST = "https://cloud:8080"
APPROVE = re.compile(r"/v1/approvals/\$REQUEST/approve")


@pytest.fixture(scope="module")
def sealed_tls_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    work = tmp_path_factory.mktemp("docs")
    assert cli.main(["provision", "--out", str(work / "pki"), "--gateways", "gw-1", "--san", "localhost",
                     "--san", "127.0.0.1"]) == 0
    shares = custody.init_keys(work / "state", custodians=3, threshold=2)
    files = SimpleNamespace(ca=work / "pki" / "ca.crt", cert=work / "pki" / "server.crt",
                            key=work / "pki" / "server.key")
    server = ServerProcess(db_url=f"sqlite:///{work / 'cloud.db'}", state_dir=work / "state", log=work / "cloud.log",
                           dev=False, tls=files)
    url = server.url.replace("127.0.0.1", "localhost")
    try:
        yield SimpleNamespace(url=url, work=work, ca=files.ca, shares=shares, server=server)
    finally:
        server.stop()


def _curl_lines() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for line in (ROOT / doc).read_text().splitlines():
            if line.startswith("curl ") and HOST in line:
                out.append((doc, line))
    return out


def _sh(line: str, cloud: SimpleNamespace, env: dict[str, str]) -> dict:
    """Run one documented line with bash, the host replaced, in a folder holding pki/ (as the docs' is)."""
    proc = subprocess.run(["bash", "-c", line.replace(HOST, cloud.url)], cwd=cloud.work, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "CURL_CA_BUNDLE": str(cloud.ca), **env})
    assert proc.returncode == 0, (line, proc.stderr)
    return json.loads(proc.stdout)


def test_every_documented_curl_call_works_as_written(sealed_tls_cloud: SimpleNamespace) -> None:
    cloud = sealed_tls_cloud
    lines = _curl_lines()
    approve = next(line for _doc, line in lines if APPROVE.search(line))
    env = {"ADMIN": ADMIN_TOKEN, "COMPLIANCE": COMPLIANCE_TOKEN}
    ran = []
    with httpx.Client(base_url=cloud.url, verify=tls_context(cloud.ca), timeout=60) as http:
        for doc, line in lines:
            if APPROVE.search(line):
                continue  # run after each request that needs it, below
            if "/v1/rounds" in line and "DS" not in env:
                pytest.fail(f"{doc}: a round call before any data scientist was created")
            if line.rstrip().endswith("/v1/rounds"):
                for i in (1, 2, 3):  # a round needs its quorum of enrolled participants
                    assert FakeNode(http, f"doc-gw-{i}").enroll().status_code == 201
            answer = _sh(line, cloud, env)
            ran.append((doc, line))
            if "/healthz" in line:
                assert answer["status"] == "ok", answer
            elif answer.get("state") == "pending":  # a two-person request: approve it with the documented line
                decided = _sh(approve, cloud, {**env, "REQUEST": str(answer["id"])})
                assert decided["state"] == "approved" and decided["decided_by"] == "compliance", decided
                token = answer["secret"]["token"]
                if answer["action"] == "user.create":
                    who = http.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"}).json()
                    assert who["name"] == answer["params"]["name"]
                    if who["role"] == "data_scientist":
                        env["DS"] = token
                else:
                    assert answer["action"] == "enrollment_token.issue" and len(token) > 20
            elif line.rstrip().endswith("/v1/rounds"):
                assert answer["state"] == "collecting" and answer["quorum"] == 3, answer
            elif line.rstrip().endswith("/metrics"):
                # the body passes the schema (a 422 would answer a list); no candidate yet in a collecting round
                assert isinstance(answer["detail"], str) and "collecting" in answer["detail"], answer
            else:
                pytest.fail(f"{doc}: unexpected answer to {line}: {answer}")
    assert len(ran) == len(lines) - sum(bool(APPROVE.search(x)) for _d, x in lines)
    assert {d for d, _ in ran} == set(DOCS)


def test_unseal_reads_piped_shares_to_the_end_and_accepted_shares_exit_0(
        sealed_tls_cloud: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    cloud = sealed_tls_cloud
    argv = ["cloud", "unseal", "--url", cloud.url, "--token", COMPLIANCE_TOKEN, "--ca-file", str(cloud.ca)]
    monkeypatch.setattr("sys.stdin", io.StringIO(cloud.shares[0]))  # one share, no trailing newline or blank line
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "'state': 'sealed'" in out and "(1 so far)" in out
    monkeypatch.setattr("sys.stdin", io.StringIO("wfshare1-00-1-00-00000000\n"))
    assert cli.main(argv) == 2
    assert "share refused (400)" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO(cloud.shares[2] + "\n\n"))
    assert cli.main(argv) == 0
    assert "'state': 'unsealed'" in capsys.readouterr().out


def test_model_evaluate_scores_a_version_on_a_hospital_file(sealed_tls_cloud: SimpleNamespace, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    t0 = 1_767_225_600
    data = tmp_path / "heldout.csv"
    data.write_text("patient,time,glucose\n" + "".join(f"p{p},{t0 + 300 * i + 7},{110 + (i * 7 + p) % 60}\n"
                                                       for p in range(3) for i in range(100)))
    common = ["--url", cloud_url(sealed_tls_cloud), "--token", ADMIN_TOKEN, "--ca-file", str(sealed_tls_cloud.ca)]
    assert cli.main(["model", "evaluate", "--version", "0", "--data", str(data), *common]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["version"] == 0 and doc["metrics"]["n_windows"] == 3 * (99 - 36 + 1)
    assert doc["metrics"]["rmse30"] > 0 and 0 <= doc["metrics"]["clarke_ab30"] <= 1
    assert cli.main(["model", "evaluate", "--version", "0", "--data", str(data), "--post", *common]) == 2
    assert "came from no round" in capsys.readouterr().err
    saved = tmp_path / "v0.json"
    with httpx.Client(verify=tls_context(sealed_tls_cloud.ca)) as http:
        saved.write_text(http.get(f"{cloud_url(sealed_tls_cloud)}/v1/models/0").text)
    assert cli.main(["model", "evaluate", "--model", str(saved), "--data", str(data)]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"] == doc["metrics"]


def cloud_url(cloud: SimpleNamespace) -> str:
    return cloud.url
