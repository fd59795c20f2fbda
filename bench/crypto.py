"""CKKS cost for the production model: plaintext vs encrypted submission and aggregation, same run.

1. Aggregation of 50 updates of the production size (federation.model.N_PARAMS): plaintext (float32 bytes,
   numpy sum) vs CKKS (encrypt + serialise each, homomorphic sum, decrypt) with the federation's parameters
   (federation.ckks). Reports ciphertext bytes per float32 byte and the max absolute error of the sum.
2. A whole training round at a gateway: DP-SGD on about 2,500 windows (10 devices x 1 day, the demo's 2 local
   epochs), then sign and POST the update to a real HTTP endpoint (uvicorn on loopback), in plaintext vs
   CKKS-encrypted; each repetition trains once and submits both ways; medians over repetitions.

    python -m bench.crypto [--reps 3]

Last line: `crypto: expansion=<x> max_abs_err=<e> encrypted_round_overhead=<fraction> participants=50`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import statistics
import threading
import time
import warnings

import httpx
import numpy as np
from fastapi import FastAPI, Request

from device.sensor import synthetic_trace
from federation import ckks, model
from federation.clock import DEFAULT_SIM_START
from federation.signing import sign
from federation.windows import windows_from_series
from gateway.trainer import DPConfig, train_dp
from sim.broker import free_port

PARTICIPANTS = 50


def gateway_windows(devices: int = 10) -> tuple[np.ndarray, np.ndarray]:
    series = [synthetic_trace(seed=7, patient=f"bench-dev{k:03d}", start=DEFAULT_SIM_START, days=1.0)[::2]
              for k in range(devices)]
    return windows_from_series([(t, g) for t, g in series])


def serve_sink() -> tuple[str, object]:
    """A real uvicorn server on loopback that accepts a submission (parses the JSON, decodes the payload)."""
    import uvicorn

    app = FastAPI()

    @app.post("/submit")
    async def submit(request: Request) -> dict:
        doc = await request.json()
        return {"bytes": len(base64.b64decode(doc["payload"]))}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return f"http://127.0.0.1:{port}", server


def submit(http: httpx.Client, key, payload: bytes, n: int) -> None:  # noqa: ANN001
    doc = {"n_samples": n, "payload_sha256": hashlib.sha256(payload).hexdigest()}
    body = {"envelope": doc, "signature": sign(key, doc), "payload": base64.b64encode(payload).decode()}
    http.post("/submit", json=body).raise_for_status()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import torch
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    torch.set_num_threads(1)
    secret = ckks.new_secret_context()
    public = ckks.load_context(ckks.public_bytes(secret))
    x, y = gateway_windows()
    cfg = DPConfig()
    base = model.init_weights(seed=0)

    # A real weighted update (delta x n_samples) sets the scale; 50 participants vary around it.
    first = train_dp(base, x, y, cfg=cfg, epochs=2, seed=0)
    real = (first.weights.astype(np.float64) - base) * first.n_samples
    rng = np.random.default_rng(0)
    updates = [real * rng.uniform(0.5, 1.5) + rng.normal(0, real.std(), real.size) for _ in range(PARTICIPANTS)]
    scale = float(np.mean([np.sqrt(np.mean(u**2)) for u in updates]))

    t = time.perf_counter()
    plain_blobs = [u.astype(np.float32).tobytes() for u in updates]
    plain_sum = ckks.sum_plain([np.frombuffer(b, dtype=np.float32) for b in plain_blobs])
    plain_s = time.perf_counter() - t
    t = time.perf_counter()
    blobs = [ckks.encrypt(public, u) for u in updates]
    enc_s = time.perf_counter() - t
    t = time.perf_counter()
    summed = ckks.sum_encrypted(public, blobs)
    sum_s = time.perf_counter() - t
    t = time.perf_counter()
    got = ckks.decrypt(secret, summed)
    dec_s = time.perf_counter() - t
    want = ckks.sum_plain([u.astype(np.float32) for u in updates])
    err = float(np.max(np.abs(got - want)))
    expansion = float(np.mean([len(b) for b in blobs])) / (4 * model.N_PARAMS)
    del plain_sum
    print(f"model: {model.ARCHITECTURE}, {model.N_PARAMS} params ({4 * model.N_PARAMS} B as float32); "
          f"CKKS N={ckks.POLY_MODULUS_DEGREE} coeff={list(ckks.COEFF_MOD_BIT_SIZES)} scale=2^{ckks.GLOBAL_SCALE_BITS}")
    print(f"aggregate of {PARTICIPANTS}: plaintext serialise+sum {plain_s * 1e3:.1f} ms | CKKS encrypt+serialise "
          f"{enc_s * 1e3:.0f} ms ({enc_s / PARTICIPANTS * 1e3:.1f} ms each), sum {sum_s * 1e3:.0f} ms, "
          f"decrypt {dec_s * 1e3:.1f} ms")
    print(f"ciphertext {np.mean([len(b) for b in blobs]):.0f} B per update = {expansion:.2f}x float32; max abs error "
          f"{err:.3g} = {err / scale:.2g} of one update's RMS ({scale:.3g}), {err / np.max(np.abs(want)):.2g} of "
          f"max|sum|")

    url, server = serve_sink()
    key = Ed25519PrivateKey.generate()
    plain_rounds, enc_rounds = [], []
    with httpx.Client(base_url=url, timeout=60) as http:
        submit(http, key, b"warm-up", 1)
        for rep in range(args.reps):
            t = time.perf_counter()
            res = train_dp(base, x, y, cfg=cfg, epochs=2, seed=rep + 1)
            train_s = time.perf_counter() - t
            update = ckks.weighted_update(res.weights.astype(np.float64) - base, res.n_samples)
            t = time.perf_counter()
            submit(http, key, update.astype(np.float32).tobytes(), res.n_samples)
            plain_rounds.append(train_s + time.perf_counter() - t)
            t = time.perf_counter()
            submit(http, key, ckks.encrypt(public, update), res.n_samples)
            enc_rounds.append(train_s + time.perf_counter() - t)
            print(f"round {rep}: training {train_s:.2f} s ({len(x)} windows, {res.steps} steps); plaintext round "
                  f"{plain_rounds[-1]:.3f} s, encrypted round {enc_rounds[-1]:.3f} s")
    server.should_exit = True
    overhead = statistics.median(enc_rounds) / statistics.median(plain_rounds) - 1
    print(f"crypto: expansion={expansion:.2f} max_abs_err={err:.3g} encrypted_round_overhead={overhead:.4f} "
          f"participants={PARTICIPANTS}")


if __name__ == "__main__":
    main()
