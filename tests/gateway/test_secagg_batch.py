"""A pool's batched secure-aggregation answers (`gateway.secagg_batch`) against the real aggregator: one node whose
signatures fail makes the cloud refuse the batch, the others still answer one by one and the round goes on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.responses import PublicRound
from gateway.cloud_client import CloudClient
from gateway.pool import EXCHANGES, at_most
from gateway.secagg_batch import step_together
from gateway.secagg_client import SecAggClient
from tests.cloud.participants import ADMIN, FakeNode, open_round


def test_a_batch_refused_for_one_node_falls_back_to_one_by_one(cloud, tmp_path: Path) -> None:  # noqa: ANN001
    with httpx.Client(base_url=cloud.url, timeout=30) as http:
        fakes = [FakeNode(http, f"h-{i}") for i in range(1, 5)]
        for f in fakes:
            assert f.enroll().status_code == 201
        rid = open_round(http, quorum=3, inputs=False)
        rnd = PublicRound.model_validate(http.get(f"/v1/rounds/{rid}", headers=ADMIN).json())  # names the expected
        status = lambda: http.get(f"/v1/rounds/{rid}/secagg", headers=ADMIN).json()  # noqa: E731

        async def step(impostor: bool) -> list[SecAggClient]:
            cloud_client = CloudClient(cloud.url, attempts=1)
            keys = [Ed25519PrivateKey.generate() if impostor and i == 0 else f.key for i, f in enumerate(fakes)]
            clients = [SecAggClient(participant_id=f.id, key=k, cloud=cloud_client, state_dir=tmp_path / f.id)
                       for f, k in zip(fakes, keys, strict=True)]
            try:
                await step_together(clients, rnd, cloud_client,
                                    one_by_one=lambda due: at_most(EXCHANGES, [c.step(rnd) for c in due]))
            finally:
                await cloud_client.aclose()
            return clients

        asyncio.run(step(impostor=True))  # h-1's key is not the enrolled one: the batch of views is refused (401)
        assert sorted(status()["answered"]["advertise"]) == ["h-2", "h-3", "h-4"]  # the others, one by one
        asyncio.run(step(impostor=False))  # h-1 with its own key answers; the others' answers are not repeated
        assert sorted(status()["answered"]["advertise"]) == ["h-1", "h-2", "h-3", "h-4"]
        assert status()["phase"] == "share"
