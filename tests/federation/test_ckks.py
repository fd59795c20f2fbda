"""CKKS helpers: encrypted sum equals the plaintext twin, public contexts cannot decrypt, bad blobs are refused."""

from __future__ import annotations

import cbor2
import numpy as np
import pytest

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
