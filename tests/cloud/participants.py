"""Test helper: a participant that enrolls and builds (optionally tampered) signed submissions."""

from __future__ import annotations

import base64
import hashlib
import uuid

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation import ckks, dp_accounting, model
from federation.signing import public_key_b64, sign


class FakeNode:
    """Speaks the real wire protocol with real keys and real CKKS; trains nothing (updates are given)."""

    def __init__(self, client: httpx.Client, participant_id: str, *, token: str) -> None:
        self.client = client
        self.id = participant_id
        self.key = Ed25519PrivateKey.generate()
        self.token = token

    def enroll(self) -> httpx.Response:
        return self.client.post("/v1/participants", json={"participant_id": self.id, "kind": "gateway",
                                                           "public_key": public_key_b64(self.key),
                                                           "token": self.token})

    def submission(self, round_id: int, delta: np.ndarray, *, n_samples: int, base_version: int = 0,
                   key: Ed25519PrivateKey | None = None) -> dict:
        ctx = ckks.load_context(self.client.get("/v1/context").content)
        blob = ckks.encrypt(ctx, np.asarray(delta, dtype=np.float64) * n_samples)
        history = [(1.0, 0.1, 20)]
        eps = dp_accounting.epsilon(history, accountant="rdp")
        env = {"round": round_id, "participant": self.id, "n_samples": n_samples,
               "base_model_version": base_version, "ciphertext_sha256": hashlib.sha256(blob).hexdigest(),
               "idempotency_key": uuid.uuid4().hex,
               "dp": {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 20, "accountant": "rdp",
                      "delta": 1e-5, "unit": "window", "epsilon_round": eps, "epsilon_cumulative": eps,
                      "history": [list(h) for h in history]}}
        return {"envelope": env, "signature": sign(key or self.key, env),
                "ciphertext": base64.b64encode(blob).decode()}

    def submit(self, round_id: int, body: dict) -> httpx.Response:
        return self.client.post(f"/v1/rounds/{round_id}/updates", json=body)


def random_delta(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.01, model.N_PARAMS)
