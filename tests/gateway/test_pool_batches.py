"""A pool's batched requests against the real aggregator (secure-aggregation answers, `gateway.secagg_batch`;
audit-log acknowledgements, `gateway.witness.acknowledge_together`): one node whose signatures fail makes the cloud
refuse the batch, and the others still get through one by one."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.checkpoint import Checkpoint
from federation.responses import PublicRound
from gateway.cloud_client import CloudClient
from gateway.pool import EXCHANGES, at_most
from gateway.secagg_batch import step_together
from gateway.secagg_client import SecAggClient
from gateway.witness import LogWitness, Seen, acknowledge_together
from tests.cloud.participants import ADMIN, FakeNode, audit_kinds, open_round


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


def test_acknowledgements_refused_together_for_one_node_go_one_by_one(cloud, tmp_path: Path) -> None:  # noqa: ANN001
    with httpx.Client(base_url=cloud.url, timeout=30) as http:
        fakes = [FakeNode(http, f"h-{i}") for i in range(1, 4)]
        for f in fakes:
            assert f.enroll().status_code == 201
        doc = http.get("/v1/log/checkpoint").json()
        cp = Checkpoint.from_body(doc["body"].encode())
    seen = Seen(public_key=doc["public_key"], tree_size=cp.tree_size, root_hex=cp.root_hash.hex(), body=doc["body"],
                signature=doc["signature"], at=time.time())
    keys = [Ed25519PrivateKey.generate(), fakes[1].key, fakes[2].key]  # h-1 signs with a key that is not its own
    witnesses = [LogWitness(tmp_path / f.id, node_id=f.id, key=k) for f, k in zip(fakes, keys, strict=True)]

    async def acknowledge() -> None:
        client = CloudClient(cloud.url, attempts=1)
        try:
            await acknowledge_together([(w, True) for w in witnesses], seen, client)
        finally:
            await client.aclose()

    asyncio.run(acknowledge())
    assert [w.acked_size for w in witnesses] == [None, cp.tree_size, cp.tree_size]
    assert audit_kinds(cloud).count("witness.acknowledged") == 2
