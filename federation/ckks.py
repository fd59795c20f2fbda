"""CKKS helpers (TenSEAL): the federation's context, packing a flat update into ciphertexts, summing them.

Parameters are chosen for sums only: ciphertexts are added, never multiplied, so one data prime suffices and
its size is all that matters. N = 4096 with coefficient moduli [49, 28] bits and scale 2^28:

* security: log2 q = 77 bits, within the 109 bits that 128-bit classical security allows at N = 4096
  (HomomorphicEncryption.org Security Standard, Albrecht et al. 2018, Table 1, ternary/uniform secret);
* capacity: a ciphertext holds |value| < q0 / (2 * scale) = 2^20; `encrypt` refuses an update with any
  |value| > MAX_ABS_VALUE = 2^19 / MAX_SUMMANDS, so a sum of up to MAX_SUMMANDS updates can never wrap;
* precision: about 1.4e-4 absolute on a sum of 50 updates (2^-28 scale times the encryption noise);
* size: one ciphertext keeps only the 49-bit prime, 2 polynomials x 4096 coefficients, which TenSEAL's zstd
  serialisation stores in about 7.9 bytes per float32 of a 3,650-weight update (2 ciphertexts of 2,048 slots).

Measured by `python -m bench.crypto` (docs/gateway.md), against N = 8192 [60, 40] 2^40 (9.0x) and TenSEAL's
tutorial [60, 40, 40, 60] (about 20x). The plaintext twin `sum_plain` has the same shape so each can be tested
against the other.
"""

from __future__ import annotations

from collections.abc import Sequence

import cbor2
import numpy as np
import tenseal as ts

POLY_MODULUS_DEGREE = 4096
COEFF_MOD_BIT_SIZES = (49, 28)
GLOBAL_SCALE_BITS = 28
SLOTS = POLY_MODULUS_DEGREE // 2
MAX_SUMMANDS = 64  # most updates one aggregate may sum
MAX_ABS_VALUE = 2.0 ** (COEFF_MOD_BIT_SIZES[0] - GLOBAL_SCALE_BITS - 2) / MAX_SUMMANDS  # 8192: a sum stays < 2^19


class CKKSError(ValueError):
    """A ciphertext blob or context does not parse, or does not match the federation's parameters."""


def new_secret_context() -> ts.Context:
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=POLY_MODULUS_DEGREE,
        coeff_mod_bit_sizes=list(COEFF_MOD_BIT_SIZES),
    )
    ctx.global_scale = 2**GLOBAL_SCALE_BITS
    return ctx


def serialize_secret(ctx: ts.Context) -> bytes:
    return ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)


def public_bytes(ctx: ts.Context) -> bytes:
    """The context participants and the aggregator get: public key only, no secret key."""
    return ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)


def load_context(data: bytes) -> ts.Context:
    try:
        return ts.context_from(data)
    except Exception as exc:
        raise CKKSError(f"not a TenSEAL context: {exc}") from exc


def encrypt(ctx: ts.Context, vector: np.ndarray) -> bytes:
    """Encrypt a flat float vector as ceil(len / SLOTS) CKKS ciphertexts, packed into one CBOR blob.

    Raises CKKSError for non-finite values or any |value| > MAX_ABS_VALUE (the sum's overflow guard).
    """
    flat = np.asarray(vector, dtype=np.float64).ravel()
    if not np.all(np.isfinite(flat)):
        raise CKKSError("update holds NaN or infinite values")
    if flat.size and np.max(np.abs(flat)) > MAX_ABS_VALUE:
        raise CKKSError(f"update value {np.max(np.abs(flat)):.6g} exceeds {MAX_ABS_VALUE:g}: a sum of "
                        f"{MAX_SUMMANDS} such updates could wrap modulo the ciphertext modulus")
    chunks = [flat[i : i + SLOTS] for i in range(0, flat.size, SLOTS)]
    return cbor2.dumps({"n": int(flat.size), "ct": [ts.ckks_vector(ctx, c.tolist()).serialize() for c in chunks]})


def _unpack(ctx: ts.Context, blob: bytes) -> tuple[int, list[ts.CKKSVector]]:
    try:
        doc = cbor2.loads(blob)
        n, parts = int(doc["n"]), doc["ct"]
        if not isinstance(parts, list) or len(parts) != -(-n // SLOTS):
            raise ValueError(f"{len(parts)} ciphertexts for {n} values")
        vectors = [ts.ckks_vector_from(ctx, p) for p in parts]
    except Exception as exc:
        raise CKKSError(f"malformed ciphertext blob: {exc}") from exc
    # TenSEAL parses some garbage into an empty vector instead of failing: check every chunk's length.
    for i, v in enumerate(vectors):
        want = min(SLOTS, n - i * SLOTS)
        if v.size() != want:
            raise CKKSError(f"malformed ciphertext blob: chunk {i} holds {v.size()} values, expected {want}")
    return n, vectors


def sum_encrypted(ctx: ts.Context, blobs: Sequence[bytes]) -> bytes:
    """Homomorphic sum of encrypted vectors of equal length; needs only the public context."""
    if not blobs:
        raise CKKSError("nothing to sum")
    n, acc = _unpack(ctx, blobs[0])
    for blob in blobs[1:]:
        m, parts = _unpack(ctx, blob)
        if m != n:
            raise CKKSError(f"length mismatch: {m} != {n}")
        acc = [a + p for a, p in zip(acc, parts, strict=True)]
    return cbor2.dumps({"n": n, "ct": [a.serialize() for a in acc]})


def sum_plain(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Plaintext twin of `sum_encrypted` + `decrypt`."""
    return np.sum(np.stack([np.asarray(v, dtype=np.float64) for v in vectors]), axis=0)


def decrypt(ctx: ts.Context, blob: bytes) -> np.ndarray:
    """Decrypt with a context that holds the secret key."""
    if not ctx.has_secret_key():
        raise CKKSError("this context has no secret key")
    n, parts = _unpack(ctx, blob)
    return np.concatenate([np.asarray(p.decrypt(), dtype=np.float64) for p in parts])[:n]


def check(ctx: ts.Context, blob: bytes) -> int:
    """Parse every ciphertext of a packed blob under `ctx`; returns the number of values it holds."""
    return _unpack(ctx, blob)[0]


# FedAvg weights each update by its sample count; a raw delta x n (a hospital with 40,000 windows, a weight that
# moved by 0.3) would pass MAX_ABS_VALUE, so participants encrypt delta x n / UPDATE_WEIGHT_SCALE and the
# aggregate is scaled back. Bound: |delta| x n < MAX_ABS_VALUE x 64 (524,288: a weight moving by 1.0 in a node
# with 500,000 windows); the absolute CKKS error of ~1.4e-4 becomes ~0.009 / (total samples) per averaged weight.
UPDATE_WEIGHT_SCALE = 64.0


def weighted_update(delta: np.ndarray, n_samples: int) -> np.ndarray:
    """What a participant encrypts: its weight delta times its sample count, scaled into the safe range."""
    return np.asarray(delta, dtype=np.float64) * n_samples / UPDATE_WEIGHT_SCALE


def average_update(summed: np.ndarray, total_samples: int) -> np.ndarray:
    """FedAvg's mean delta from the decrypted sum of `weighted_update`s."""
    return np.asarray(summed, dtype=np.float64) * UPDATE_WEIGHT_SCALE / total_samples
