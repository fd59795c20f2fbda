"""CKKS helpers (TenSEAL): the federation's context, packing an update into ciphertexts, summing them, and the
integer ("residue") encoding under which a sum of masked updates decrypts exactly.

Parameters are chosen for sums only: ciphertexts are added, never multiplied, so one data prime suffices.
N = 4096, coefficient moduli [60, 49] bits (q0: the data prime; p: the special prime), scale Delta = 2^31.

* security: log2(q0 p) = 109 bits, the most that 128-bit classical security allows at N = 4096 for ternary
  secrets (HomomorphicEncryption.org Security Standard, Albrecht et al. 2018, Table 1; SEAL refuses more);
* size: a ciphertext keeps only q0: 2 polynomials x 4096 coefficients of 60 bits, about 65.7 kB serialised.

Two encodings share the context:

* floats (`encrypt`, `decrypt`): any |value| <= MAX_ABS_VALUE = 2^13, absolute error about 2^-20 on a sum;
  used where nothing is masked (tests, the benchmark's unmasked peer);
* residues (`encrypt_residues`, `decrypt` of such a blob): integers in [0, M), M = 2^40 (RESIDUE_MODULUS), each
  written as LIMBS = 2 limbs of LIMB_BITS = 20 bits (lower limbs of every value first, then upper limbs), one limb
  per slot. Secure aggregation (`federation.secagg`) adds masks modulo M to a quantised update and encrypts the
  residues; the homomorphic sum of up to MAX_SUMMANDS = 64 such blobs decrypts to limb sums that round to the exact
  integers, from which the sum modulo M is rebuilt: sum = L0 + 2^20 L1 (mod M).

Why limbs: CKKS encodes through a double-precision FFT, whose error grows with the values (about 2^-46 of them,
below); a 40-bit value per slot would put that error near 1, a 20-bit limb keeps it below 2^-13.

THE BOUND. Claim: for n <= 64 blobs, each a fresh public-key encryption under this context of limbs z_i in
[0, 2^20)^slots, the decryption of their homomorphic sum differs from sum_i z_i by less than
DECODE_ERROR_BOUND = 0.2512 in every slot, so rounding each slot gives the exact integer sum.

Notation: ||a|| is the largest absolute coefficient of a polynomial a in Z[X]/(X^N + 1); sigma is the canonical
embedding (decoding evaluates a plaintext polynomial at the primitive 2N-th roots of unity, then divides by Delta).

1. Encoding (SEAL `CKKSEncoder`): m = round(Delta sigma^-1(z)) computed in double precision. sigma^-1 averages
   N terms of modulus |z_j|, so ||sigma^-1(z)|| <= max|z| < 2^20; hence ||m|| <= Delta 2^20, and m differs from
   Delta sigma^-1(z) by at most 1/2 (rounding) + f_enc per coefficient, f_enc the FFT's floating-point error.
2. Fresh noise (SEAL `Encryptor::encrypt_zero` with a public key, for a plaintext one level below the key level,
   as here): SEAL encrypts zero at the key level q0 p as (pk0 u + e0, pk1 u + e1), pk = (-(a s + e), a), u and
   the secret s ternary, e, e0, e1 bounded by B = 21 (SEAL's centred binomial sampler; its clipped normal is
   bounded by 6 x 3.2 < 21). Its noise -e u + e0 + e1 s has ||.|| <= B(2N + 1). SEAL then divides by p and
   rounds both polynomials (`round_last_coeff_modulus` / `divide_and_round_q_last`): the noise becomes
   (-e u + e0 + e1 s)/p + r0 + r1 s with |r0|, |r1| <= 1/2 per coefficient, so
   ||e_fresh|| <= B(2N + 1)/p + (N + 1)/2 <= 2049.5 (p >= 2^48). The plaintext m is added to c0 afterwards.
   (Secret-key encryption, which TenSEAL uses when the context holds the secret, has noise ||e0|| <= B.)
3. Sum of n ciphertexts: exact addition modulo q0, so c0 + c1 s = sum m_i + sum e_i (mod q0) with
   ||sum m_i + sum e_i|| <= n (Delta 2^20 + 1/2 + f_enc + 2049.5) < 2^6 x 2^51.01 < 2^58 < q0/2 (a 60-bit prime
   exceeds 2^59): decryption recovers that polynomial exactly, with no wrap-around.
4. Decoding: each slot is (1/Delta) sum_k c_k zeta^k with |zeta| = 1, so a coefficient error vector d moves a slot
   by at most N ||d|| / Delta. With ||d|| <= n (2049.5 + 1/2 + f_enc):
   N n 2050 / Delta = 2^12 x 2^6 x 2050 / 2^31 = 0.25024 (+ the floating-point terms below).
5. Floating point: a radix-2 FFT of length N in IEEE double has relative 2-norm error at most log2(N) eta /
   (1 - log2(N) eta), eta = mu + gamma_4 (sqrt 2 + mu), mu the twiddle factors' error (Higham, Accuracy and
   Stability of Numerical Algorithms, 2nd ed. 2002, Thm 24.2); with u = 2^-53 and mu <= 2^-50 that is < 2^-45.5.
   Encoding: ||f_enc||_2 <= 2^-45.5 Delta 2^20, which moves a slot by at most sqrt(N) 2^-45.5 2^20 = 2^-19.5 per
   summand, 2^-13.5 for 64. Decoding: converting a coefficient (< 2^58) to double errs by <= 2^5, i.e. 2^-26 after
   dividing by Delta, at most N 2^-26 = 2^-14 per slot; the decoding FFT errs by <= 2^-45.5 of a 2-norm
   <= sqrt(N) 2^26, i.e. <= 2^-13.5. Total under 2^-12 < FP_SLACK = 2^-10.
   Hence |decoded - exact| < 0.25024 + 2^-10 < DECODE_ERROR_BOUND < 1/2.  QED.

The bound is worst case (every noise coefficient at its extreme and aligned); measured errors are about 1e-3
(`tests/federation/test_ckks.py` property-tests 64 summands of a full-size update at the extremes of [0, 2^20)).
`decrypt` refuses a residue blob whose slots are not within DECODE_ERROR_BOUND of integers: that can only happen
if some summand was not a fresh encryption (a participant sending a ciphertext with forged noise breaks the sum,
which this detects with high probability, but reveals nothing).

Measured by `python -m bench.crypto` (docs/cloud.md). The plaintext twin `sum_plain` has the same shape as the
encrypted sum, so each can be tested against the other.
"""

from __future__ import annotations

from collections.abc import Sequence

import cbor2
import numpy as np
import tenseal as ts

from federation.errors import SchemaError

POLY_MODULUS_DEGREE = 4096
COEFF_MOD_BIT_SIZES = (60, 49)
GLOBAL_SCALE_BITS = 31
SLOTS = POLY_MODULUS_DEGREE // 2
MAX_SUMMANDS = 64  # most updates one aggregate may sum (the largest supported round)
MAX_ABS_VALUE = 2.0**13  # a float update's bound (and secure aggregation's quantisation range)

# residue encoding
LIMB_BITS = 20
LIMBS = 2
RESIDUE_BITS = LIMB_BITS * LIMBS
RESIDUE_MODULUS = 2**RESIDUE_BITS  # M
FLOATS, RESIDUES = "f64", "residues/v1"

# THE BOUND (module docstring): worst-case decoding error of a sum of MAX_SUMMANDS fresh residue encryptions.
NOISE_SAMPLE_BOUND = 21  # B: SEAL's error samples (centred binomial, or clipped normal at 6 sigma)
FRESH_NOISE_BOUND = (POLY_MODULUS_DEGREE + 1) / 2 + NOISE_SAMPLE_BOUND * (2 * POLY_MODULUS_DEGREE + 1) / 2.0 ** (
    COEFF_MOD_BIT_SIZES[1] - 1)
FP_SLACK = 2.0**-10
DECODE_ERROR_BOUND = (POLY_MODULUS_DEGREE * MAX_SUMMANDS * (FRESH_NOISE_BOUND + 0.5) / 2.0**GLOBAL_SCALE_BITS
                      + FP_SLACK)


class CKKSError(SchemaError):
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


def _pack(ctx: ts.Context, slots: np.ndarray, n: int, encoding: str) -> bytes:
    chunks = [slots[i : i + SLOTS] for i in range(0, slots.size, SLOTS)]
    doc: dict = {"n": n, "ct": [ts.ckks_vector(ctx, c.tolist()).serialize() for c in chunks]}
    if encoding != FLOATS:
        doc["enc"] = encoding
    return cbor2.dumps(doc)


def encrypt(ctx: ts.Context, vector: np.ndarray) -> bytes:
    """Encrypt a flat float vector as ceil(len / SLOTS) CKKS ciphertexts, packed into one CBOR blob.

    Raises CKKSError for non-finite values or any |value| > MAX_ABS_VALUE (the sum's range guard).
    """
    flat = np.asarray(vector, dtype=np.float64).ravel()
    if not np.all(np.isfinite(flat)):
        raise CKKSError("update holds NaN or infinite values")
    if flat.size and np.max(np.abs(flat)) > MAX_ABS_VALUE:
        raise CKKSError(f"update value {np.max(np.abs(flat)):.6g} exceeds {MAX_ABS_VALUE:g}: a sum of "
                        f"{MAX_SUMMANDS} such updates would leave the range the federation encodes")
    return _pack(ctx, flat, int(flat.size), FLOATS)


def encrypt_residues(ctx: ts.Context, residues: np.ndarray) -> bytes:
    """Encrypt integers in [0, RESIDUE_MODULUS) as LIMBS limbs of LIMB_BITS bits (lower limbs first)."""
    r = np.asarray(residues)
    if r.dtype.kind not in "iu":
        raise CKKSError(f"residues must be integers, got {r.dtype}")
    r = r.astype(np.int64).ravel()
    if r.size and (r.min() < 0 or r.max() >= RESIDUE_MODULUS):
        raise CKKSError(f"residues must lie in [0, 2^{RESIDUE_BITS})")
    mask = (1 << LIMB_BITS) - 1
    limbs = np.concatenate([(r >> (LIMB_BITS * k)) & mask for k in range(LIMBS)]).astype(np.float64)
    return _pack(ctx, limbs, int(r.size), RESIDUES)


def _unpack(ctx: ts.Context, blob: bytes) -> tuple[int, str, list[ts.CKKSVector]]:
    try:
        doc = cbor2.loads(blob)
        n, parts, encoding = int(doc["n"]), doc["ct"], doc.get("enc", FLOATS)
        if encoding not in (FLOATS, RESIDUES):
            raise ValueError(f"unknown encoding {encoding!r}")
        width = n * (LIMBS if encoding == RESIDUES else 1)
        if n < 0 or not isinstance(parts, list) or len(parts) != -(-width // SLOTS):
            raise ValueError(f"{len(parts)} ciphertexts for {n} values")
        vectors = [ts.ckks_vector_from(ctx, p) for p in parts]
    except Exception as exc:
        raise CKKSError(f"malformed ciphertext blob: {exc}") from exc
    # TenSEAL parses some garbage into an empty vector instead of failing: check every chunk's length.
    for i, v in enumerate(vectors):
        want = min(SLOTS, width - i * SLOTS)
        if v.size() != want:
            raise CKKSError(f"malformed ciphertext blob: chunk {i} holds {v.size()} values, expected {want}")
    return n, encoding, vectors


def sum_encrypted(ctx: ts.Context, blobs: Sequence[bytes]) -> bytes:
    """Homomorphic sum of encrypted vectors of equal length and encoding; needs only the public context."""
    if not blobs:
        raise CKKSError("nothing to sum")
    if len(blobs) > MAX_SUMMANDS:
        raise CKKSError(f"{len(blobs)} summands: the encoding is proved for at most {MAX_SUMMANDS}")
    n, encoding, acc = _unpack(ctx, blobs[0])
    for blob in blobs[1:]:
        m, enc, parts = _unpack(ctx, blob)
        if m != n:
            raise CKKSError(f"length mismatch: {m} != {n}")
        if enc != encoding:
            raise CKKSError(f"encoding mismatch: {enc} != {encoding}")
        acc = [a + p for a, p in zip(acc, parts, strict=True)]
    return _pack_vectors(acc, n, encoding)


def _pack_vectors(vectors: list[ts.CKKSVector], n: int, encoding: str) -> bytes:
    doc: dict = {"n": n, "ct": [v.serialize() for v in vectors]}
    if encoding != FLOATS:
        doc["enc"] = encoding
    return cbor2.dumps(doc)


def sum_plain(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Plaintext twin of `sum_encrypted` + `decrypt` (floats)."""
    return np.sum(np.stack([np.asarray(v, dtype=np.float64) for v in vectors]), axis=0)


def sum_residues_plain(residues: Sequence[np.ndarray]) -> np.ndarray:
    """Plaintext twin of `sum_encrypted` + `decrypt` (residues): the sum modulo RESIDUE_MODULUS."""
    total = np.zeros(np.asarray(residues[0]).size, dtype=np.int64)
    for r in residues:
        total = (total + np.asarray(r, dtype=np.int64)) % RESIDUE_MODULUS
    return total


def limbs_to_residues(decoded: np.ndarray, n: int) -> np.ndarray:
    """Round decoded limb sums to integers (checking THE BOUND) and rebuild the sum modulo RESIDUE_MODULUS."""
    values = np.asarray(decoded, dtype=np.float64)
    if values.size != n * LIMBS:
        raise CKKSError(f"{values.size} decoded limbs for {n} values")
    rounded = np.rint(values)
    off = np.abs(values - rounded)
    if values.size and off.max() >= DECODE_ERROR_BOUND:
        k = int(off.argmax())
        raise CKKSError(f"decoded limb {k} is {off[k]:.3g} from an integer (bound {DECODE_ERROR_BOUND:.4f}): not a "
                        f"sum of at most {MAX_SUMMANDS} fresh residue encryptions")
    sums = rounded.astype(np.int64).reshape(LIMBS, n)
    if sums.size and (sums.min() < 0 or sums.max() >= MAX_SUMMANDS << LIMB_BITS):
        raise CKKSError("decoded limb sum outside [0, MAX_SUMMANDS x 2^LIMB_BITS)")
    total = np.zeros(n, dtype=np.int64)
    for k in range(LIMBS):
        total = (total + ((sums[k] % RESIDUE_MODULUS) << (LIMB_BITS * k))) % RESIDUE_MODULUS
    return total


def decrypt(ctx: ts.Context, blob: bytes) -> np.ndarray:
    """Decrypt with a context that holds the secret key: float64 values for a float blob, int64 residues modulo
    RESIDUE_MODULUS (exact, by THE BOUND) for a residue blob."""
    if not ctx.has_secret_key():
        raise CKKSError("this context has no secret key")
    n, encoding, parts = _unpack(ctx, blob)
    values = np.concatenate([np.asarray(p.decrypt(), dtype=np.float64) for p in parts]) if parts else np.zeros(0)
    if encoding == RESIDUES:
        return limbs_to_residues(values[: n * LIMBS], n)
    return values[:n]


def encoding_of(blob: bytes) -> str:
    try:
        return cbor2.loads(blob).get("enc", FLOATS)
    except Exception as exc:
        raise CKKSError(f"malformed ciphertext blob: {exc}") from exc


def check(ctx: ts.Context, blob: bytes, *, encoding: str | None = None) -> int:
    """Parse every ciphertext of a packed blob under `ctx` (and check its encoding); the number of values."""
    n, enc, _parts = _unpack(ctx, blob)
    if encoding is not None and enc != encoding:
        raise CKKSError(f"ciphertext encoding is {enc}, expected {encoding}")
    return n


# FedAvg weights each update by its sample count; a raw delta x n (a hospital with 40,000 windows, a weight that
# moved by 0.3) would pass MAX_ABS_VALUE, so participants encrypt delta x n / UPDATE_WEIGHT_SCALE and the
# aggregate is scaled back. Bound: |delta| x n < MAX_ABS_VALUE x 64 (524,288: a weight moving by 1.0 in a node
# with 500,000 windows).
UPDATE_WEIGHT_SCALE = 64.0


def weighted_update(delta: np.ndarray, n_samples: int) -> np.ndarray:
    """What a participant encrypts: its weight delta times its sample count, scaled into the safe range."""
    return np.asarray(delta, dtype=np.float64) * n_samples / UPDATE_WEIGHT_SCALE


def average_update(summed: np.ndarray, total_samples: int) -> np.ndarray:
    """FedAvg's mean delta from the decrypted sum of `weighted_update`s."""
    return np.asarray(summed, dtype=np.float64) * UPDATE_WEIGHT_SCALE / total_samples
