"""Test helpers: a participant that enrolls and builds (optionally tampered) signed submissions, and staff."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation import ckks, dp_accounting, model
from federation.signing import public_key_b64, sign
from tests.conftest import ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
STEP = (1.0, 0.1, 20)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def issue_token(client: httpx.Client, participant_id: str | None = None, **extra: object) -> str:
    resp = client.post("/v1/enrollment-tokens", json={"participant_id": participant_id, **extra}, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    return resp.json()["token"]


def create_user(client: httpx.Client, name: str, role: str) -> dict:
    resp = client.post("/v1/users", json={"name": name, "role": role}, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    return bearer(resp.json()["token"])


class FakeNode:
    """Speaks the real wire protocol with real keys and real CKKS; trains nothing (updates are given)."""

    def __init__(self, client: httpx.Client, participant_id: str, *, token: str | None = None) -> None:
        self.client = client
        self.id = participant_id
        self.key = Ed25519PrivateKey.generate()
        self.token = token if token is not None else issue_token(client, participant_id)
        self.history: list[tuple[float, float, int]] = []

    def enroll(self) -> httpx.Response:
        return self.client.post("/v1/participants", json={"participant_id": self.id, "kind": "gateway",
                                                           "public_key": public_key_b64(self.key),
                                                           "token": self.token})

    def submission(self, round_id: int, delta: np.ndarray, *, n_samples: int, base_version: int = 0,
                   key: Ed25519PrivateKey | None = None, step: tuple[float, float, int] = STEP,
                   history: list | None = None, understate: float = 0.0, accountant: str = "rdp") -> dict:
        ctx = ckks.load_context(self.client.get("/v1/context").content)
        blob = ckks.encrypt(ctx, ckks.weighted_update(delta, n_samples))
        hist = [*self.history, step] if history is None else history
        eps = dp_accounting.epsilon(hist, accountant=accountant)
        eps_round = dp_accounting.epsilon([step], accountant=accountant)
        env = {"round": round_id, "participant": self.id, "n_samples": n_samples,
               "base_model_version": base_version, "ciphertext_sha256": hashlib.sha256(blob).hexdigest(),
               "idempotency_key": uuid.uuid4().hex,
               "dp": {"noise_multiplier": step[0], "sample_rate": step[1], "steps": step[2],
                      "accountant": accountant, "delta": 1e-5, "unit": "window", "epsilon_round": eps_round,
                      "epsilon_cumulative": eps - understate, "history": [list(h) for h in hist]}}
        return {"envelope": env, "signature": sign(key or self.key, env),
                "ciphertext": base64.b64encode(blob).decode()}

    def submit(self, round_id: int, body: dict) -> httpx.Response:
        resp = self.client.post(f"/v1/rounds/{round_id}/updates", json=body)
        if resp.status_code == 200 and not resp.json()["duplicate"]:
            self.history = [tuple(h) for h in body["envelope"]["dp"]["history"]]
        return resp


def random_delta(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.01, model.N_PARAMS)


def open_round(client: httpx.Client, *, quorum: int = 2, deadline_s: float = 60, headers: dict = ADMIN) -> int:
    resp = client.post("/v1/rounds", json={"quorum": quorum, "deadline_s": deadline_s}, headers=headers)
    assert resp.status_code == 201, resp.text
    return resp.json()["round"]


def wait_state(client: httpx.Client, round_id: int, states: tuple[str, ...], timeout: float = 30) -> dict:
    deadline = time.time() + timeout
    report: dict = {}
    while time.time() < deadline:
        report = client.get(f"/v1/rounds/{round_id}", headers=ADMIN).json()
        if report["state"] in states:
            return report
        time.sleep(0.05)
    raise AssertionError(f"round {round_id} never reached {states}: {report}")


def assert_reason(resp: httpx.Response, status: int, fragment: str) -> None:
    assert resp.status_code == status, resp.text
    assert fragment in str(resp.json()["detail"]), resp.json()


def run_round(client: httpx.Client, nodes: list[FakeNode], *, seed: int = 0, n_samples: int = 50) -> dict:
    """Open a round as admin, have every node submit, and wait until it completes."""
    base = client.get("/v1/models/promoted").json()["version"]
    round_id = open_round(client)
    for i, node in enumerate(nodes):
        body = node.submission(round_id, random_delta(seed + i), n_samples=n_samples, base_version=base)
        resp = node.submit(round_id, body)
        assert resp.status_code == 200, resp.text
    return wait_state(client, round_id, ("completed", "failed"))
