"""Defect 14, cloud and HTTP side (issue 14): `wearfed cloud serve --tls-cert/--tls-key` serves https with a
certificate of the deployment's own CA (made here by `federation.tls`, as a deployment's internal CA would), and every
HTTP client of the cloud checks it with `--ca-file`: participant nodes (enrollment, a DP-SGD round, the log witness),
`wearfed cloud unseal` and `wearfed model`. A client without the CA, or a certificate for another host, is refused."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from federation.tls import CertificateAuthority, server_files, tls_context, write_pem
from gateway.cloud_client import CloudClient
from gateway.node import NodeConfig, ParticipantNode
from gateway.trainer import DPConfig
from tests.cloud.participants import ADMIN, issue_token
from tests.cloud.server import ServerProcess
from tests.conftest import ADMIN_TOKEN
from tests.gateway.test_node import serve_until, windows


def _wearfed(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "federation.cli", *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "WEARFED_TOKEN": ADMIN_TOKEN})


@pytest.fixture
def tls_cloud(tmp_path: Path):  # noqa: ANN201
    files = server_files(tmp_path / "tls", hosts=["localhost", "127.0.0.1"])
    server = ServerProcess(db_url=f"sqlite:///{tmp_path / 'cloud.db'}", state_dir=tmp_path / "state",
                           log=tmp_path / "cloud.log", tls=files)
    yield server, files
    server.stop()


def test_nodes_enroll_train_submit_and_witness_over_tls(tls_cloud, tmp_path: Path) -> None:  # noqa: ANN001
    server, files = tls_cloud
    assert server.url.startswith("https://")
    with httpx.Client(base_url=server.url, verify=tls_context(files.ca), timeout=60) as http:
        tokens = {pid: issue_token(http, pid) for pid in ("gw-1", "gw-2", "gw-3")}

    def cfg(pid: str) -> NodeConfig:
        return NodeConfig(participant_id=pid, kind="gateway", cloud_url=server.url, state_dir=tmp_path / pid,
                          enroll_token=tokens[pid], dp=DPConfig(accountant="rdp"), privacy_rng="simulation", seed=1,
                          ca_file=files.ca)

    async def scenario() -> dict:
        nodes = [ParticipantNode(cfg(pid), windows(pid)) for pid in tokens]
        for n in nodes:
            await n.enroll()
            assert await n.witness.check(n.cloud, force=True)
        async with httpx.AsyncClient(base_url=server.url, headers=ADMIN, verify=tls_context(files.ca),
                                     timeout=60) as http:
            rnd = (await http.post("/v1/rounds", json={"quorum": 3, "deadline_s": 300})).json()
            # the nodes' own poll-and-serve step (secure aggregation's phases, training, submission) over TLS
            report = await serve_until(nodes, http, rnd["round"], states=("completed", "failed"))
        for n in nodes:
            assert await n.witness.check(n.cloud, force=True)  # the log grew; the consistency proof verifies
            await n.aclose()
        return report

    report = asyncio.run(scenario())
    assert report["state"] == "completed", report
    assert [u["participant"] for u in report["updates"]] == ["gw-1", "gw-2", "gw-3"]

    listed = _wearfed("model", "list", "--url", server.url, "--ca-file", str(files.ca))
    assert listed.returncode == 0 and "candidate" in listed.stdout, listed.stderr
    (tmp_path / "shares").write_text("wfshare1-not-a-share\n")
    unseal = _wearfed("cloud", "unseal", "--url", server.url, "--ca-file", str(files.ca), "--shares-file",
                      str(tmp_path / "shares"))
    assert unseal.returncode == 2 and "409" in unseal.stderr  # reached the cloud over TLS: already unsealed


def test_clients_without_the_ca_or_for_another_host_are_refused(tls_cloud, tmp_path: Path) -> None:  # noqa: ANN001
    server, files = tls_cloud
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{server.url}/healthz", timeout=10)  # the system's CAs do not know the deployment's CA
    other_ca = write_pem(tmp_path / "other-ca.crt", CertificateAuthority.create("another CA").cert)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{server.url}/healthz", verify=tls_context(other_ca), timeout=10)
    refused = _wearfed("model", "list", "--url", server.url, "--ca-file", str(other_ca))
    assert refused.returncode == 2 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr, refused.stderr
    with pytest.raises(httpx.TransportError):  # no plaintext HTTP on the TLS port
        httpx.get(f"{server.url.replace('https', 'http')}/healthz", timeout=10)

    async def node_with_another_ca() -> None:
        cloud = CloudClient(server.url, ca_file=other_ca, attempts=1)
        try:
            await cloud.request("GET", "/v1/log/checkpoint")
        finally:
            await cloud.aclose()

    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(node_with_another_ca())
