"""A pool's nodes acknowledge the audit log together (``POST /v1/log/witness/batch``) against a real aggregator: each
acknowledgement kept or refused as it would be alone (a checkpoint the log never issued raises its alert and refuses
only that one); one forged signature refuses the batch whole and keeps nothing."""

from __future__ import annotations

import time

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.checkpoint import Checkpoint
from federation.node_signals import WITNESS_DOMAIN, signed
from tests.cloud.participants import COMPLIANCE, FakeNode, assert_reason, audit_kinds


def ack(node: FakeNode, tree_size: int, root: str, key: Ed25519PrivateKey | None = None) -> dict:
    body = {"participant": node.id, "tree_size": tree_size, "root": root, "checked_at": time.time()}
    return signed(key or node.key, body, WITNESS_DOMAIN)


def test_acknowledgements_in_a_batch_are_each_kept_or_refused_as_alone(cloud, http: httpx.Client) -> None:  # noqa: ANN001
    nodes = [FakeNode(http, f"h-{i}") for i in range(1, 4)]
    for n in nodes:
        assert n.enroll().status_code == 201
    cp = Checkpoint.from_body(http.get("/v1/log/checkpoint").json()["body"].encode())
    size, root = cp.tree_size, cp.root_hash.hex()

    forged = [ack(nodes[0], size, root), ack(nodes[1], size, root, key=Ed25519PrivateKey.generate())]
    assert_reason(http.post("/v1/log/witness/batch", json={"acks": forged}), 401, "batch item 1 (h-2")
    assert audit_kinds(cloud).count("witness.acknowledged") == 0  # h-1's good one was not kept either

    batch = [ack(nodes[0], size, root), ack(nodes[1], size, "0" * 64), ack(nodes[2], size, root)]
    resp = http.post("/v1/log/witness/batch", json={"acks": batch})
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert [(r["participant"], r["status"]) for r in results] == [("h-1", 200), ("h-2", 409), ("h-3", 200)]
    assert results[0]["tree_size"] == size and "no checkpoint" in results[1]["detail"]
    kinds = audit_kinds(cloud)
    assert kinds.count("witness.acknowledged") == 2 and "witness.rejected" in kinds
    alerts = http.get("/v1/privacy/alerts", headers=COMPLIANCE).json()
    assert [a["participant"] for a in alerts if a["kind"] == "intrusion.witness_mismatch"] == ["h-2"]
    assert http.post("/v1/log/witness/batch", json={"acks": []}).status_code == 422
