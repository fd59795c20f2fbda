"""A wearfed round with every participant's work done on this machine, for `bench.flower_scale`: the n clients'
local DP-SGD (`bench.peer_task.local_update`) in a process pool, then each participant's protocol over real HTTP
(`bench.crypto.Sink`: uvicorn on loopback), then the aggregator's checks and FedAvg.

Three ways, each from the same trained clients:

- plain: each participant signs and POSTs its float32 weighted update (`ckks.weighted_update`); the aggregator
  verifies each signature and digest, sums and averages (`ckks.average_update`).
- ckks: the same with the update CKKS-encrypted (`ckks.encrypt`); the aggregator also parses each ciphertext
  (`ckks.check`, as the cloud does on submission), sums under encryption and decrypts the sum.
- masked: secure aggregation (`federation.secagg`, `bench.crypto.MaskedFederation` as the honest cloud's views):
  every participant advertises keys, downloads its view and shares seeds, masks + encrypts + POSTs its update,
  signs the consistency view, reveals shares; the aggregator sums, decrypts and removes the masks.

The participants run one after another in this process (one core); the aggregator is this process too. Not
included: the cloud's database writes, audit ledger, privacy-spend recomputation and custodian checks
(`cloud.aggregation`), which a real cloud adds to the ckks and masked rounds alike.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from itertools import repeat

import httpx
import numpy as np

from bench.crypto import MaskedFederation, Sink, post, submission_body
from bench.peer_task import local_update
from federation import ckks, secagg
from federation.signing import public_key_b64, verify

VARIANTS = ("plain", "ckks", "masked")


@dataclass
class Federation:
    """The fixed parts a round runs in: enrolled participants' identity keys, the CKKS contexts, the endpoint."""

    n: int
    sink: Sink
    http: httpx.Client
    public: object
    secret: object
    keys: list = field(default_factory=list)

    def __post_init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self.keys = self.keys or [Ed25519PrivateKey.generate() for _ in range(self.n)]
        self.public_keys = [public_key_b64(k) for k in self.keys]


def train_all(pool: Executor, n: int, base: np.ndarray, data_dir: str, epochs: int,
              seed: int | None = None) -> list[tuple[np.ndarray, int]]:
    return list(pool.map(local_update, range(n), repeat(base), repeat(data_dir), repeat(epochs), repeat(seed)))


def collect_submissions(fed: Federation, *, encrypted: bool) -> tuple[list[bytes], int]:
    """The aggregator's submission checks: each signature over its envelope, the ciphertext's digest, and (encrypted)
    that the blob parses under the public context with one value per parameter."""
    bodies = [b for b in fed.sink.received if "ciphertext" in b]
    fed.sink.received.clear()
    if len(bodies) != fed.n:
        raise RuntimeError(f"{len(bodies)} submissions arrived, {fed.n} expected")
    blobs, total = [], 0
    for public_key, body in zip(fed.public_keys, bodies, strict=True):
        env = body["envelope"]
        verify(public_key, env, body["signature"])
        blob = base64.b64decode(body["ciphertext"])
        if hashlib.sha256(blob).hexdigest() != env["ciphertext_sha256"]:
            raise RuntimeError("ciphertext digest mismatch")
        if encrypted:
            ckks.check(fed.public, blob)
        blobs.append(blob)
        total += int(env["n_samples"])
    return blobs, total


def plain_round(fed: Federation, base: np.ndarray, trained: list[tuple[np.ndarray, int]]) -> np.ndarray:
    for key, (w, n) in zip(fed.keys, trained, strict=True):
        update = ckks.weighted_update(w.astype(np.float64) - base, n).astype(np.float32)
        post(fed.http, submission_body(key, update.tobytes(), n))
    blobs, total = collect_submissions(fed, encrypted=False)
    summed = ckks.sum_plain([np.frombuffer(b, dtype=np.float32).astype(np.float64) for b in blobs])
    return base + ckks.average_update(summed, total)


def ckks_round(fed: Federation, base: np.ndarray, trained: list[tuple[np.ndarray, int]]) -> np.ndarray:
    for key, (w, n) in zip(fed.keys, trained, strict=True):
        blob = ckks.encrypt(fed.public, ckks.weighted_update(w.astype(np.float64) - base, n))
        post(fed.http, submission_body(key, blob, n))
    blobs, total = collect_submissions(fed, encrypted=True)
    return base + ckks.average_update(ckks.decrypt(fed.secret, ckks.sum_encrypted(fed.public, blobs)), total)


def masked_round(fed: Federation, base: np.ndarray, trained: list[tuple[np.ndarray, int]],
                 round_id: int = 1) -> np.ndarray:
    sf = MaskedFederation(fed.n, round_id=round_id, identity_keys=fed.keys)  # fresh round keys, enrolled identities

    def view(p: str, phase: str) -> dict:  # the cloud builds the view, the participant downloads it
        fed.sink.views[f"{phase}-{p}"] = json.dumps(sf.view(p, phase)).encode()
        return json.loads(fed.http.get(f"/view/{phase}-{p}").raise_for_status().content)

    for p in sf.ids:
        post(fed.http, sf.sessions[p].advert(sf.keys[p]))
    for p in sf.ids:
        body = sf.sessions[p].shares(view(p, "share"), sf.keys[p])
        sf.shares[p] = body["doc"]
        post(fed.http, body)
    for p, (w, n) in zip(sf.ids, trained, strict=True):
        update = ckks.weighted_update(w.astype(np.float64) - base, n)
        blob = sf.sessions[p].masked_blob(view(p, "input"), update, fed.public)
        post(fed.http, submission_body(sf.keys[p], blob, n))
    for p in sf.ids:
        body = sf.sessions[p].consistency(view(p, "consistency"), sf.keys[p])
        sf.signatures.append({"participant": p, "signature": body["signature"]})
        post(fed.http, body)
    for p in sf.ids:
        body = sf.sessions[p].unmask(view(p, "unmask"), sf.keys[p])
        sf.responses[p] = body["doc"]
        post(fed.http, body)
    blobs, total = collect_submissions(fed, encrypted=True)
    residues = ckks.decrypt(fed.secret, ckks.sum_encrypted(fed.public, blobs))
    return base + ckks.average_update(secagg.dequantise(sf.unmask(residues)[0]), total)


ROUNDS = {"plain": plain_round, "ckks": ckks_round, "masked": masked_round}


def timed_rounds(fed: Federation, pool: Executor, base: np.ndarray, data_dir: str, epochs: int,
                 seed: int | None = None, variants: tuple[str, ...] = VARIANTS,
                 ) -> tuple[dict[str, float], dict[str, np.ndarray], dict]:
    """One repetition: train the n clients once (timed), then each variant's protocol and aggregation on those
    updates (timed). Round time of a variant = training + its protocol and aggregation. Returns (round seconds per
    variant, new weights per variant, detail: training seconds, per-variant protocol seconds, the trained clients)."""
    t = time.perf_counter()
    trained = train_all(pool, fed.n, base, data_dir, epochs, seed)
    train_s = time.perf_counter() - t
    seconds, models, protocol = {}, {}, {}
    for name in variants:
        t = time.perf_counter()
        models[name] = ROUNDS[name](fed, base, trained)
        protocol[name] = time.perf_counter() - t
        seconds[name] = train_s + protocol[name]
    return seconds, models, {"train_s": train_s, "protocol_s": protocol, "trained": trained}
