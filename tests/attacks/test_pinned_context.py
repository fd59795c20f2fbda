"""Attack (issue 13, item 4): whoever swaps the CKKS public context the cloud serves (the file on the cloud host, or a
plain-HTTP link in the middle) would decrypt every update encrypted under it.

Before: nodes fetched /v1/context anonymously at every start and encrypted under whatever came back. Now a node pins
the key bound to its one-time enrollment token and refuses any other; the cloud refuses to serve a public context
that does not match its sealed secret. A real node against a real cloud behind a tampering proxy (real HTTP).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from cloud import custody
from cloud.assembly import CloudSettings, assemble
from federation import ckks
from federation.enrollment import ContextMismatch, key_id_of
from federation.errors import SignatureError
from gateway.node import NodeConfig, ParticipantNode
from gateway.trainer import DPConfig
from tests.cloud.participants import issue_token
from tests.conftest import serve_app


def tampering_proxy(upstream: str, *, swap_context: bool = False, swap_binding: bool = False) -> FastAPI:
    """Forwards everything to the real cloud; swaps the CKKS context it serves and/or the enrollment answer."""
    app = FastAPI()
    other = ckks.public_bytes(ckks.new_secret_context())  # the attacker keeps this context's secret key

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT"])
    async def forward(path: str, request: Request) -> Response:
        if swap_context and path == "v1/context":
            return Response(other, media_type="application/octet-stream")
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        async with httpx.AsyncClient(base_url=upstream) as client:
            resp = await client.request(request.method, "/" + path, content=await request.body(), headers=headers,
                                        params=request.query_params)
        body = resp.content
        if swap_binding and path == "v1/participants" and request.method == "POST" and resp.status_code == 201:
            doc = resp.json()
            doc["binding"]["ckks_key_id"] = key_id_of(other)
            body = json.dumps(doc).encode()
        return Response(body, status_code=resp.status_code, media_type=resp.headers.get("content-type"))

    return app


def make_node(url: str, tmp_path: Path, token: str, **cfg: object) -> ParticipantNode:
    conf = NodeConfig(participant_id="gw-1", kind="gateway", cloud_url=url, state_dir=tmp_path / "gw-1",
                      enroll_token=token, dp=DPConfig(accountant="rdp"), **cfg)
    return ParticipantNode(conf, lambda _cutoff: ((), ()))


def enroll(node: ParticipantNode) -> None:
    async def go() -> None:
        try:
            await node.enroll()
        finally:
            await node.aclose()

    asyncio.run(go())


def test_a_swapped_binding_at_enrollment_is_refused(cloud, http: httpx.Client, tmp_path: Path) -> None:  # noqa: ANN001
    with serve_app(tampering_proxy(cloud.url, swap_binding=True)) as proxy:
        node = make_node(proxy, tmp_path, issue_token(http, "gw-1"))
        with pytest.raises(SignatureError, match="not bound to this enrollment token"):
            enroll(node)
    assert node._public_ctx is None  # never loaded a context to encrypt under


def test_a_swapped_context_after_enrollment_is_refused(cloud, http: httpx.Client, tmp_path: Path) -> None:  # noqa: ANN001
    token = issue_token(http, "gw-1")
    honest = make_node(cloud.url, tmp_path, token)
    enroll(honest)
    assert honest.binding["ckks_key_id"] == key_id_of(http.get("/v1/context").content)
    with serve_app(tampering_proxy(cloud.url, swap_context=True)) as proxy:
        restarted = make_node(proxy, tmp_path, token)  # same state directory: the pinned binding
        with pytest.raises(ContextMismatch, match="pinned"):
            enroll(restarted)
    assert restarted._public_ctx is None


def test_a_key_id_from_provisioning_must_match(cloud, http: httpx.Client, tmp_path: Path) -> None:  # noqa: ANN001
    asked = http.post("/v1/enrollment-tokens", json={"participant_id": "gw-1"},
                      headers={"Authorization": "Bearer test-admin-token"})
    assert asked.json()["secret"]["ckks_key_id"] == key_id_of(http.get("/v1/context").content)
    node = make_node(cloud.url, tmp_path, issue_token(http, "gw-1"), expected_key_id="0" * 64)
    with pytest.raises(ContextMismatch, match="provisioning says"):
        enroll(node)


def test_the_cloud_refuses_to_serve_a_context_its_custodians_cannot_open(tmp_path: Path) -> None:
    state = tmp_path / "state"
    custody.init_keys(state, custodians=3, threshold=2)
    public = custody.custody_dir(state) / custody.PUBLIC_CONTEXT_FILE
    public.write_bytes(ckks.public_bytes(ckks.new_secret_context()))  # swapped on the cloud host
    with pytest.raises(custody.CustodyError, match="refusing to serve a context"):
        assemble(CloudSettings(db_url=f"sqlite:///{tmp_path / 'c.db'}", state_dir=state))


def test_custody_needs_two_custodians_at_least(tmp_path: Path) -> None:
    with pytest.raises(custody.CustodyError, match="no one custodian may unseal alone"):
        custody.init_keys(tmp_path, custodians=3, threshold=1)
