"""The region relay over TLS (scale-out issue): `wearfed region serve --tls-cert/--tls-key` serves https with a
certificate of the deployment's own CA (`federation.tls.CertificateAuthority`), participant nodes sending through it
(`--region-url`) check it with their `--ca-file` and complete a round through it; a node without that CA (the
system's CAs, or another CA) is refused at once and nothing of it reaches the relay; the flags go together."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from cloud.audit import verify_ledger
from cloud.engine import make_engine, make_sessionmaker
from federation.cli import main
from federation.tls import CertificateAuthority, server_files, tls_context, write_pem
from gateway.node import NodeConfig, ParticipantNode
from gateway.trainer import DPConfig
from tests.cloud.regions import relay_process
from tests.conftest import ENROLL_TOKEN
from tests.gateway.test_node import ADMIN, serve_until, windows

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _node(cloud_url: str, tmp: Path, pid: str, relay_url: str, ca: Path | None) -> ParticipantNode:
    cfg = NodeConfig(participant_id=pid, kind="gateway", cloud_url=cloud_url, state_dir=tmp / pid,
                     enroll_token=ENROLL_TOKEN, dp=DPConfig(accountant="rdp"), privacy_rng="simulation", seed=1,
                     ca_file=ca, region="r-tls", region_url=relay_url)
    return ParticipantNode(cfg, windows(pid))


def test_nodes_submit_through_a_tls_region_relay_and_a_node_without_its_ca_is_refused(  # noqa: ANN001
        cloud, http, tmp_path: Path) -> None:
    files = server_files(tmp_path / "tls", hosts=["localhost", "127.0.0.1"], name="region")
    other_ca = write_pem(tmp_path / "other-ca.crt", CertificateAuthority.create("another CA").cert)
    members = ["gw-1", "gw-2", "gw-3"]
    with relay_process(tmp_path, http, cloud.url, "r-tls", members=members, flush_after=5.0, tls=files) as relay:
        assert relay.url.startswith("https://")
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{relay.url}/healthz", timeout=10)  # the system's CAs do not know the deployment's CA
        with pytest.raises(httpx.TransportError):  # no plaintext HTTP on the TLS port
            httpx.get(f"{relay.url.replace('https', 'http')}/healthz", timeout=10)

        async def scenario() -> tuple[dict, dict]:
            nodes = [_node(cloud.url, tmp_path, pid, relay.url, files.ca) for pid in members]
            for n in nodes:
                await n.enroll()
            async with httpx.AsyncClient(base_url=cloud.url, headers=ADMIN, timeout=60) as admin:
                rnd = (await admin.post("/v1/rounds", json={"quorum": 3, "deadline_s": 300})).json()
                report = await serve_until(nodes, admin, rnd["round"], states=("completed", "failed"))
            strangers = [_node(cloud.url, tmp_path, "gw-4", relay.url, None),  # the system's CAs
                         _node(cloud.url, tmp_path, "gw-5", relay.url, other_ca)]
            for n in strangers:
                await n.enroll()  # enrolled at the cloud (plain http here); the relay is what they cannot trust
            # what a node without the CA sends never leaves it: the relay's certificate is refused, not retried
            body = {"envelope": {"round": report["round"], "region": "r-tls"}, "signature": "", "ciphertext": ""}
            for stranger in strangers:
                with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                    await stranger.updates.request("POST", f"/v1/rounds/{report['round']}/updates", json=body)
            async with httpx.AsyncClient(verify=tls_context(files.ca), timeout=30) as client:
                status = (await client.get(f"{relay.url}/v1/status")).json()
            for n in [*nodes, *strangers]:
                await n.aclose()
            return report, status

        report, status = asyncio.run(scenario())
    assert report["state"] == "completed", report
    assert report["contributors"] == members
    forwarded = status["rounds"][str(report["round"])]
    assert forwarded["forwarded"] == members and forwarded["batches"][0]["status"] == "accepted", forwarded
    kinds = [e["kind"] for e in cloud.audit_entries()]
    assert kinds.count("region.aggregate.accepted") == 1
    verify_ledger(make_sessionmaker(make_engine(cloud.db_url)))


def test_region_serve_tls_flags_go_together(cloud, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    files = server_files(tmp_path / "tls", hosts=["127.0.0.1"], name="region")
    base = ["region", "serve", "--id", "r-1", "--cloud", cloud.url, "--state-dir", str(tmp_path / "r"),
            "--enroll-token", "x"]
    for extra, fragment in ((["--tls-cert", str(files.cert)], "--tls-cert and --tls-key go together"),
                            (["--tls-key", str(files.key)], "--tls-cert and --tls-key go together"),
                            (["--tls-cert", str(tmp_path / "nope.crt"), "--tls-key", str(files.key)],
                             "no such file")):
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err, err
