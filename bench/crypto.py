"""CKKS and secure-aggregation cost for the production model: plaintext, unmasked CKKS and masked CKKS (secure
aggregation, federation.secagg) side by side, same run.

1. Aggregate of 50 updates of the production size (federation.model.N_PARAMS, the weighted updates nodes send):
   unmasked CKKS (floats) vs masked CKKS (quantised residues, 2 limbs a value): bytes per update over float32
   (expansion), encrypt / sum / decrypt (+ unmask) time, max absolute error of the sum.
2. Shamir reconstruction of one 32-byte secret from t = 17 shares (the threshold at 50 participants): pycryptodome's
   GF(2^128) scheme (as cloud.custody uses it: two 16-byte halves) vs federation.shamir (GF(2^521 - 1)).
3. A round at 5 and at 50 participants, each repetition training once (DP-SGD on about 2,500 windows, 2 epochs: one
   gateway of the demo). Round wall time = training + one participant's critical path (participants work in
   parallel: its own crypto and its HTTP exchanges with a real uvicorn endpoint on loopback, the downloads of its
   views included) + the aggregator's work (sum, decrypt; masked: rebuild the seeds and remove the masks).
   Plaintext: sign + POST float32. Unmasked: CKKS-encrypt + sign + POST. Masked: advertise keys, share seeds
   (verifying every advert), mask + encrypt + POST, sign the view, reveal shares (verifying the signatures), each a
   signed POST, plus four view downloads. Bytes per participant: what it uploads (and downloads, masked).
   Medians over repetitions.

    python -m bench.crypto [--reps 3]

Last lines: `crypto: expansion=<unmasked x> max_abs_err=<e> encrypted_round_overhead=<unmasked vs plaintext>
participants=50` and, per round size, `secagg: participants=<n> masked_expansion=<x> unmasked_expansion=<x>
masked_bytes=<B> unmasked_bytes=<B> masked_round_s=<s> unmasked_round_s=<s> masking_overhead=<fraction>
masked_max_abs_err=<e>`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import statistics
import threading
import time
import warnings
from collections.abc import Callable

import httpx
import numpy as np
from fastapi import FastAPI, Request, Response

from device.sensor import synthetic_trace
from federation import ckks, model, secagg, shamir
from federation.clock import DEFAULT_SIM_START
from federation.privacy_rng import PrivacyRNG
from federation.signing import public_key_b64, sign
from federation.windows import Windows, windows_from_series
from gateway.trainer import DPConfig, train_dp
from sim.broker import free_port

PARTICIPANTS = 50
ROUND_SIZES = (5, 50)


def gateway_windows(devices: int = 10, *, prefix: str = "bench", days: float = 1.0) -> Windows:
    """One gateway's training windows: `devices` synthetic traces of `days` (times and CGM readings, not the truth)."""
    names = [f"{prefix}-dev{k:03d}" for k in range(devices)]
    series = [synthetic_trace(seed=7, patient=name, start=DEFAULT_SIM_START, days=days)[::2] for name in names]
    return windows_from_series({name: (t, g) for name, (t, g) in zip(names, series, strict=True)})


class Sink:
    """A real uvicorn server on loopback: POST /submit parses a JSON body (kept in `received` if `keep`); GET
    /view/<key> serves a stored view."""

    def __init__(self, *, keep: bool = False) -> None:
        import uvicorn

        app = FastAPI()
        self.views: dict[str, bytes] = {}
        self.received: list[dict] = []

        @app.post("/submit")
        async def submit(request: Request) -> dict:
            body = await request.json()
            if keep:
                self.received.append(body)
            return {"bytes": len(json.dumps(body))}

        @app.get("/view/{key}")
        async def view(key: str) -> Response:
            return Response(self.views[key], media_type="application/json")

        port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
        threading.Thread(target=self.server.run, daemon=True).start()
        while not self.server.started:
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{port}"


def post(http: httpx.Client, body: dict) -> int:
    data = json.dumps(body).encode()
    http.post("/submit", content=data, headers={"content-type": "application/json"}).raise_for_status()
    return len(data)


def submission_body(key, blob: bytes, n: int) -> dict:  # noqa: ANN001
    doc = {"n_samples": n, "ciphertext_sha256": hashlib.sha256(blob).hexdigest()}
    return {"envelope": doc, "signature": sign(key, doc), "ciphertext": base64.b64encode(blob).decode()}


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def aggregate_of_50(public, secret, updates: list[np.ndarray]) -> dict:  # noqa: ANN001
    """Part 1: unmasked vs masked CKKS on 50 updates (the masked sum is unmasked exactly as the cloud does)."""
    want = ckks.sum_plain(updates)
    out: dict = {}
    blobs, enc_s = timed(lambda: [ckks.encrypt(public, u) for u in updates])
    summed, sum_s = timed(lambda: ckks.sum_encrypted(public, blobs))
    got, dec_s = timed(lambda: ckks.decrypt(secret, summed))
    out["unmasked"] = {"bytes": float(np.mean([len(b) for b in blobs])), "enc_s": enc_s, "sum_s": sum_s,
                       "dec_s": dec_s, "err": float(np.max(np.abs(got - want)))}
    fed = MaskedFederation(len(updates))
    fed.setup()
    ys, mask_s = timed(lambda: [fed.sessions[p].mask(fed.view(p, "input"), u) for p, u in zip(fed.ids, updates,
                                                                                                  strict=True)])
    mblobs, menc_s = timed(lambda: [ckks.encrypt_residues(public, y) for y in ys])
    msummed, msum_s = timed(lambda: ckks.sum_encrypted(public, mblobs))
    residues, mdec_s = timed(lambda: ckks.decrypt(secret, msummed))
    fed.finish()
    (total, _summary), unmask_s = timed(lambda: fed.unmask(residues))
    mgot = secagg.dequantise(total)
    out["masked"] = {"bytes": float(np.mean([len(b) for b in mblobs])), "enc_s": mask_s + menc_s, "sum_s": msum_s,
                     "dec_s": mdec_s + unmask_s, "err": float(np.max(np.abs(mgot - want)))}
    return out


class MaskedFederation:
    """n participants' secure-aggregation sessions and the views an honest cloud would serve them."""

    def __init__(self, n: int, round_id: int = 1, identity_keys: list | None = None) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self.round = round_id
        self.ids = [f"p{i:02d}" for i in range(n)]
        keys = identity_keys or [Ed25519PrivateKey.generate() for _ in self.ids]
        self.keys = dict(zip(self.ids, keys, strict=True))
        self.sessions = {p: secagg.ParticipantSession(round_id=round_id, participant=p) for p in self.ids}
        self.adverts = [{"participant": p, "identity_key": public_key_b64(self.keys[p]),
                         **self.sessions[p].advert(self.keys[p])} for p in self.ids]
        self.shares: dict[str, dict] = {}
        self.signatures: list[dict] = []
        self.responses: dict[str, dict] = {}

    def view(self, p: str, phase: str) -> dict:
        v: dict = {"round": self.round, "phase": phase, "adverts": self.adverts}
        if phase in ("input", "consistency", "unmask"):
            v["u2"] = self.ids
            v["inbox"] = {s: d["shares"][p] for s, d in self.shares.items() if p in d["shares"]}
        if phase in ("consistency", "unmask"):
            v["u3"] = self.ids
        if phase == "unmask":
            v["consistency"] = self.signatures
        return v

    def setup(self, skip: str | None = None) -> None:
        """Everyone but `skip` (the timed participant) advertises and shares."""
        for p in self.ids:
            if p != skip:
                self.shares[p] = self.sessions[p].shares(self.view(p, "share"), self.keys[p])["doc"]

    def finish(self, skip: str | None = None) -> None:
        for p in self.ids:
            if p != skip:
                self.signatures.append({"participant": p, "signature": self.sessions[p].consistency(
                    self.view(p, "consistency"), self.keys[p])["signature"]})
        for p in self.ids:
            if p != skip:
                self.responses[p] = self.sessions[p].unmask(self.view(p, "unmask"), self.keys[p])["doc"]

    def unmask(self, residues: np.ndarray) -> tuple[np.ndarray, dict]:
        rnd = secagg.Round(self.round, secagg.verify_adverts(self.round, self.adverts))  # the cloud's checks
        return secagg.unmask_sum(residues, rnd=rnd, u2=self.ids, u3=self.ids, responses=self.responses)


def shamir_combine_times(t: int = 17, holders: int = 33, reps: int = 5) -> tuple[float, float]:
    from Crypto.Protocol.SecretSharing import Shamir

    secret = os.urandom(32)
    low, high = Shamir.split(t, holders, secret[:16]), Shamir.split(t, holders, secret[16:])
    _r, py = timed(lambda: [(Shamir.combine(low[:t]), Shamir.combine(high[:t])) for _ in range(reps)])
    ours_shares = shamir.split(secret, threshold=t, xs=range(1, holders + 1))
    sub = dict(list(ours_shares.items())[:t])
    _r, mine = timed(lambda: [shamir.combine(sub, threshold=t) for _ in range(reps)])
    return py / reps, mine / reps


def unmasked_round(n: int, update: np.ndarray, others: list[np.ndarray], public, secret, http, key,  # noqa: ANN001
                   n_samples: int) -> dict:
    blob, enc_s = timed(lambda: ckks.encrypt(public, update))
    up, post_s = timed(lambda: post(http, submission_body(key, blob, n_samples)))
    blobs = [blob] + [ckks.encrypt(public, u) for u in others[: n - 1]]
    _r, server_s = timed(lambda: ckks.decrypt(secret, ckks.sum_encrypted(public, blobs)))
    return {"node_s": enc_s + post_s, "server_s": server_s, "up": up, "down": 0, "ct": len(blob)}


def masked_round(n: int, update: np.ndarray, others: list[np.ndarray], public, secret, http, sink,  # noqa: ANN001
                 n_samples: int) -> dict:
    fed = MaskedFederation(n)
    me, key = fed.ids[0], fed.keys[fed.ids[0]]
    session = fed.sessions[me]
    fed.setup(skip=me)
    node_s, up, down, phases = 0.0, 0, 0, {}

    def download(phase: str) -> dict:
        sink.views[phase] = json.dumps(fed.view(me, phase)).encode()
        resp = http.get(f"/view/{phase}")
        return json.loads(resp.content), len(resp.content)

    def step(name: str, fn: Callable[[], tuple[int, int]]) -> None:
        nonlocal node_s, up, down
        (u, d), s = timed(fn)
        node_s, up, down = node_s + s, up + u, down + d
        phases[name] = s

    step("advertise", lambda: (post(http, session.advert(key)), 0))

    def share() -> tuple[int, int]:
        view, d = download("share")
        body = session.shares(view, key)
        fed.shares[me] = body["doc"]
        return post(http, body), d

    step("share", share)
    blobs: list[bytes] = []

    def mask() -> tuple[int, int]:
        view, d = download("input")
        blob = session.masked_blob(view, update, public)
        blobs.append(blob)
        return post(http, submission_body(key, blob, n_samples)), d

    step("input", mask)
    for p, u in zip(fed.ids[1:], others[: n - 1], strict=True):
        blobs.append(ckks.encrypt_residues(public, fed.sessions[p].mask(fed.view(p, "input"), u)))

    def consistency() -> tuple[int, int]:
        view, d = download("consistency")
        body = session.consistency(view, key)
        fed.signatures.append({"participant": me, "signature": body["signature"]})
        return post(http, body), d

    step("consistency", consistency)
    fed.finish(skip=me)

    def unmask() -> tuple[int, int]:
        view, d = download("unmask")
        body = session.unmask(view, key)
        fed.responses[me] = body["doc"]
        return post(http, body), d

    step("unmask", unmask)

    def server() -> np.ndarray:
        residues = ckks.decrypt(secret, ckks.sum_encrypted(public, blobs))
        return secagg.dequantise(fed.unmask(residues)[0])

    got, server_s = timed(server)
    want = ckks.sum_plain([update, *others[: n - 1]])
    return {"node_s": node_s, "server_s": server_s, "up": up, "down": down, "ct": len(blobs[0]), "phases": phases,
            "err": float(np.max(np.abs(got - want)))}


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
    data = gateway_windows()
    cfg = DPConfig()
    base = model.init_weights(seed=0)

    # A real weighted update (what a node encrypts) sets the scale; 50 participants vary around it.
    first = train_dp(base, data, cfg=cfg, epochs=2, rng=PrivacyRNG.secure())
    real = ckks.weighted_update(first.weights.astype(np.float64) - base, first.n_samples)
    rng = np.random.default_rng(0)
    updates = [real * rng.uniform(0.5, 1.5) + rng.normal(0, real.std(), real.size) for _ in range(PARTICIPANTS)]
    scale = float(np.mean([np.sqrt(np.mean(u**2)) for u in updates]))
    f32 = 4 * model.N_PARAMS

    agg = aggregate_of_50(public, secret, updates)
    print(f"model: {model.ARCHITECTURE}, {model.N_PARAMS} params ({f32} B as float32); CKKS "
          f"N={ckks.POLY_MODULUS_DEGREE} coeff={list(ckks.COEFF_MOD_BIT_SIZES)} scale=2^{ckks.GLOBAL_SCALE_BITS}; "
          f"masked: {ckks.LIMBS} limbs of {ckks.LIMB_BITS} bits, M=2^{ckks.RESIDUE_BITS}, "
          f"quantisation 2^-{secagg.QUANT_BITS}")
    for name, a in agg.items():
        print(f"aggregate of {PARTICIPANTS}, {name:8s}: {a['bytes']:.0f} B per update = {a['bytes'] / f32:.2f}x "
              f"float32; encrypt {a['enc_s'] * 1e3:.0f} ms ({a['enc_s'] / PARTICIPANTS * 1e3:.1f} ms each), sum "
              f"{a['sum_s'] * 1e3:.0f} ms, decrypt{' + unmask' if name == 'masked' else ''} {a['dec_s'] * 1e3:.0f} ms; "
              f"max abs error {a['err']:.3g} ({a['err'] / scale:.2g} of one update's RMS {scale:.3g})")
    py, mine = shamir_combine_times()
    print(f"shamir combine, t=17 of 33, one 32-byte secret: pycryptodome GF(2^128) (two halves) {py * 1e3:.1f} ms, "
          f"federation.shamir GF(2^521-1) {mine * 1e3:.2f} ms ({py / mine:.0f}x)")

    sink = Sink()
    key = Ed25519PrivateKey.generate()
    rows: dict[int, dict[str, list]] = {n: {"plain": [], "unmasked": [], "masked": []} for n in ROUND_SIZES}
    detail: dict[int, dict] = {}
    with httpx.Client(base_url=sink.url, timeout=120) as http:
        post(http, {"warm": "up"})
        for rep in range(args.reps):
            res, train_s = timed(lambda rep=rep: train_dp(base, data, cfg=cfg, epochs=2, rng=PrivacyRNG.secure()))
            update = ckks.weighted_update(res.weights.astype(np.float64) - base, res.n_samples)
            others = updates[1:]
            plain_body = submission_body(key, update.astype(np.float32).tobytes(), res.n_samples)
            for n in ROUND_SIZES:
                _up, plain_s = timed(lambda body=plain_body: post(http, body))
                _r, plain_server = timed(lambda n=n, u=update: ckks.sum_plain([u, *updates[1:n]]))
                u = unmasked_round(n, update, others, public, secret, http, key, res.n_samples)
                m = masked_round(n, update, others, public, secret, http, sink, res.n_samples)
                rows[n]["plain"].append(train_s + plain_s + plain_server)
                rows[n]["unmasked"].append(train_s + u["node_s"] + u["server_s"])
                rows[n]["masked"].append(train_s + m["node_s"] + m["server_s"])
                detail[n] = {"u": u, "m": m, "train_s": train_s}
                print(f"round {rep}, {n} participants: training {train_s:.2f} s; plaintext {rows[n]['plain'][-1]:.3f} "
                      f"s, unmasked {rows[n]['unmasked'][-1]:.3f} s (node {u['node_s'] * 1e3:.0f} ms, aggregator "
                      f"{u['server_s'] * 1e3:.0f} ms), masked {rows[n]['masked'][-1]:.3f} s (node "
                      f"{m['node_s'] * 1e3:.0f} ms: " + ", ".join(f"{k} {v * 1e3:.0f}" for k, v in m["phases"].items())
                      + f"; aggregator {m['server_s'] * 1e3:.0f} ms)")
    sink.server.should_exit = True
    unmasked_overhead = statistics.median(rows[PARTICIPANTS]["unmasked"]) / statistics.median(
        rows[PARTICIPANTS]["plain"]) - 1
    print(f"crypto: expansion={agg['unmasked']['bytes'] / f32:.2f} max_abs_err={agg['unmasked']['err']:.3g} "
          f"encrypted_round_overhead={unmasked_overhead:.4f} participants={PARTICIPANTS}")
    for n in ROUND_SIZES:
        u, m = detail[n]["u"], detail[n]["m"]
        masked_s, unmasked_s = statistics.median(rows[n]["masked"]), statistics.median(rows[n]["unmasked"])
        print(f"secagg: participants={n} masked_expansion={m['ct'] / f32:.2f} unmasked_expansion={u['ct'] / f32:.2f} "
              f"masked_bytes={m['up']} (+{m['down']} down) unmasked_bytes={u['up']} masked_round_s={masked_s:.3f} "
              f"unmasked_round_s={unmasked_s:.3f} masking_overhead={masked_s / unmasked_s - 1:.4f} "
              f"masked_max_abs_err={m['err']:.3g}")


if __name__ == "__main__":
    main()
