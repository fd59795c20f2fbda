"""CKKS helpers: encrypted sum equals the plaintext twin, public contexts cannot decrypt, bad blobs are refused."""

from __future__ import annotations

import cbor2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation import ckks, model


@pytest.fixture(scope="module")
def contexts():  # noqa: ANN201
    secret = ckks.new_secret_context()
    return secret, ckks.load_context(ckks.public_bytes(secret))


def test_encrypted_sum_matches_plain_sum(contexts) -> None:  # noqa: ANN001
    secret, public = contexts
    rng = np.random.default_rng(0)
    updates = [rng.normal(0, 0.01, model.N_PARAMS) * rng.integers(100, 5000) for _ in range(10)]
    summed = ckks.sum_encrypted(public, [ckks.encrypt(public, u) for u in updates])
    got = ckks.decrypt(secret, summed)
    want = ckks.sum_plain(updates)
    assert got.shape == (model.N_PARAMS,)
    assert np.max(np.abs(got - want)) < 1e-4 * np.max(np.abs(want))


def test_vectors_longer_than_the_slots_span_several_ciphertexts(contexts) -> None:  # noqa: ANN001
    secret, public = contexts
    v = np.linspace(-1, 1, ckks.SLOTS + 17)
    blob = ckks.encrypt(public, v)
    assert len(cbor2.loads(blob)["ct"]) == 2
    np.testing.assert_allclose(ckks.decrypt(secret, blob), v, atol=1e-4)


def test_public_context_holds_no_secret(contexts) -> None:  # noqa: ANN001
    _secret, public = contexts
    with pytest.raises(ckks.CKKSError, match="no secret key"):
        ckks.decrypt(public, ckks.encrypt(public, np.ones(3)))


@pytest.mark.parametrize("blob", [b"", b"junk", cbor2.dumps({"n": 3}), cbor2.dumps({"n": 3, "ct": [b"xx"]}),
                                  cbor2.dumps({"n": 5000, "ct": []})])
def test_malformed_blobs_raise_ckks_error(contexts, blob: bytes) -> None:  # noqa: ANN001
    _secret, public = contexts
    with pytest.raises(ckks.CKKSError):
        ckks.check(public, blob)


def test_length_mismatch_is_refused(contexts) -> None:  # noqa: ANN001
    _secret, public = contexts
    with pytest.raises(ckks.CKKSError, match="length mismatch"):
        ckks.sum_encrypted(public, [ckks.encrypt(public, np.ones(3)), ckks.encrypt(public, np.ones(4))])


def test_parameters_meet_the_128_bit_security_bound() -> None:
    # HomomorphicEncryption.org standard (2018), Table 1: max log2 q for 128-bit classical security.
    max_bits = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
    assert sum(ckks.COEFF_MOD_BIT_SIZES) <= max_bits[ckks.POLY_MODULUS_DEGREE]


def test_sum_of_the_most_summands_at_the_guard_does_not_wrap(contexts) -> None:  # noqa: ANN001
    secret, public = contexts
    v = np.full(model.N_PARAMS, ckks.MAX_ABS_VALUE)
    v[::2] *= -1
    blob = ckks.encrypt(public, v)
    summed = ckks.sum_encrypted(public, [blob] * ckks.MAX_SUMMANDS)
    np.testing.assert_allclose(ckks.decrypt(secret, summed), v * ckks.MAX_SUMMANDS, rtol=1e-6, atol=1e-2)


@pytest.mark.parametrize("bad", [np.array([ckks.MAX_ABS_VALUE * 1.01]), np.array([np.nan]), np.array([np.inf])])
def test_values_that_could_wrap_or_are_not_finite_are_refused(contexts, bad: np.ndarray) -> None:  # noqa: ANN001
    _secret, public = contexts
    with pytest.raises(ckks.CKKSError):
        ckks.encrypt(public, bad)


def test_regression_large_sample_counts_do_not_overflow(contexts) -> None:  # noqa: ANN001
    """clinic-week replay: a hospital with ~40,000 windows had delta x n > MAX_ABS_VALUE and refused every round."""
    secret, public = contexts
    rng = np.random.default_rng(1)
    deltas = [rng.normal(0, 0.1, model.N_PARAMS).clip(-0.3, 0.3) for _ in range(3)]
    counts = [40_000, 25_000, 500]
    blobs = [ckks.encrypt(public, ckks.weighted_update(d, n)) for d, n in zip(deltas, counts, strict=True)]
    mean = ckks.average_update(ckks.decrypt(secret, ckks.sum_encrypted(public, blobs)), sum(counts))
    want = sum(d * n for d, n in zip(deltas, counts, strict=True)) / sum(counts)
    assert np.max(np.abs(mean - want)) < 1e-4
    with pytest.raises(ckks.CKKSError, match="exceeds"):
        ckks.encrypt(public, deltas[0] * counts[0])  # the unscaled update is what used to be sent


# -- residues: the integer encoding secure aggregation uses (THE BOUND in federation/ckks.py) -------------------
def test_the_proved_bound_is_below_one_half() -> None:
    assert ckks.FRESH_NOISE_BOUND < 2049.5 + 1e-6
    assert ckks.DECODE_ERROR_BOUND < 0.2512 < 0.5
    # capacity: 64 summands of limbs < 2^20 at scale 2^31, plus noise, stay below q0 / 2 >= 2^58
    top = ckks.MAX_SUMMANDS * ((2**ckks.GLOBAL_SCALE_BITS) * (2**ckks.LIMB_BITS) + 0.5 + ckks.FRESH_NOISE_BOUND)
    assert top < 2 ** (ckks.COEFF_MOD_BIT_SIZES[0] - 2)


def _slot_error(secret, blob: bytes) -> float:  # noqa: ANN001
    import tenseal as ts

    parts = cbor2.loads(blob)["ct"]
    values = np.concatenate([np.asarray(ts.ckks_vector_from(secret, p).decrypt()) for p in parts])
    return float(np.max(np.abs(values - np.rint(values))))


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pattern=st.sampled_from(["max", "min", "alternating", "random"]), distinct=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1))
def test_sum_of_64_full_size_residue_updates_decrypts_exactly(contexts, pattern: str, distinct: int,  # noqa: ANN001
                                                               seed: int) -> None:
    """The largest supported round (MAX_SUMMANDS updates of N_PARAMS residues) at the extremes of [0, M):
    rounding the decrypted limbs gives the exact sum modulo M; the error stays far inside the proved bound."""
    secret, public = contexts
    rng = np.random.default_rng(seed)
    top = ckks.RESIDUE_MODULUS - 1
    base = {"max": np.full(model.N_PARAMS, top), "min": np.zeros(model.N_PARAMS, dtype=np.int64),
            "alternating": np.where(np.arange(model.N_PARAMS) % 2 == 0, top, 0),
            "random": rng.integers(0, ckks.RESIDUE_MODULUS, model.N_PARAMS)}[pattern]
    residues = [base] + [rng.integers(0, ckks.RESIDUE_MODULUS, model.N_PARAMS) for _ in range(distinct - 1)]
    blobs = [ckks.encrypt_residues(public, r) for r in residues]
    # the same ciphertext repeated adds its noise coherently: the worst case for the bound
    summands = [blobs[i % distinct] for i in range(ckks.MAX_SUMMANDS)]
    summed = ckks.sum_encrypted(public, summands)
    want = ckks.sum_residues_plain([residues[i % distinct] for i in range(ckks.MAX_SUMMANDS)])
    got = ckks.decrypt(secret, summed)
    assert got.dtype == np.int64 and got.shape == (model.N_PARAMS,)
    np.testing.assert_array_equal(got, want)
    assert _slot_error(secret, summed) < ckks.DECODE_ERROR_BOUND / 100


def test_residue_blobs_are_checked_and_not_mixed_with_floats(contexts) -> None:  # noqa: ANN001
    secret, public = contexts
    blob = ckks.encrypt_residues(public, np.arange(ckks.SLOTS + 5))
    assert len(cbor2.loads(blob)["ct"]) == 3  # 2 x 2053 limbs over 2048-slot ciphertexts
    assert ckks.check(public, blob, encoding=ckks.RESIDUES) == ckks.SLOTS + 5
    with pytest.raises(ckks.CKKSError, match="encoding"):
        ckks.check(public, blob, encoding=ckks.FLOATS)
    with pytest.raises(ckks.CKKSError, match="encoding mismatch"):
        ckks.sum_encrypted(public, [blob, ckks.encrypt(public, np.ones(ckks.SLOTS + 5))])
    for bad in (np.array([-1]), np.array([ckks.RESIDUE_MODULUS]), np.array([0.5])):
        with pytest.raises(ckks.CKKSError):
            ckks.encrypt_residues(public, bad)
    np.testing.assert_array_equal(ckks.decrypt(secret, blob), np.arange(ckks.SLOTS + 5))


def test_a_residue_blob_that_is_not_near_integers_is_refused(contexts) -> None:  # noqa: ANN001
    """Limbs off by 0.4 (a forged, noisy summand) violate the bound: decryption refuses rather than guess."""
    secret, public = contexts
    forged = ckks._pack(public, np.full(2 * 10, 3.4), 10, ckks.RESIDUES)
    with pytest.raises(ckks.CKKSError, match="from an integer"):
        ckks.decrypt(secret, forged)


def test_more_summands_than_proved_are_refused(contexts) -> None:  # noqa: ANN001
    _secret, public = contexts
    blob = ckks.encrypt_residues(public, np.ones(3, dtype=np.int64))
    with pytest.raises(ckks.CKKSError, match="at most 64"):
        ckks.sum_encrypted(public, [blob] * (ckks.MAX_SUMMANDS + 1))
