"""Prime-field Shamir sharing (federation.shamir): any t shares recover the secret, fewer do not, bad input is
refused."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from federation import shamir


def test_the_field_is_m521_and_prime() -> None:
    sympy = pytest.importorskip("sympy")
    assert shamir.PRIME == 2**521 - 1 and sympy.isprime(shamir.PRIME)
    assert shamir.PRIME > 2 ** (8 * shamir.SECRET_BYTES) and shamir.SHARE_BYTES == 66


@settings(max_examples=40, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), t=st.integers(1, 9), extra=st.integers(0, 8),
       xs=st.sets(st.integers(1, 2**64), min_size=17, max_size=17), data=st.data())
def test_any_t_shares_recover_the_secret_and_extras_must_agree(secret: bytes, t: int, extra: int, xs: set[int],
                                                                data: st.DataObject) -> None:
    holders = sorted(xs)[: t + extra]
    shares = shamir.split(secret, threshold=t, xs=holders)
    assert set(shares) == set(holders) and all(len(v) == shamir.SHARE_BYTES for v in shares.values())
    subset = data.draw(st.permutations(holders))[: data.draw(st.integers(t, len(holders)))]
    assert shamir.combine({x: shares[x] for x in subset}, threshold=t) == secret
    if t > 1:
        with pytest.raises(shamir.ShamirError, match="needed"):
            shamir.combine({x: shares[x] for x in subset[: t - 1]}, threshold=t)
    if len(subset) > t:  # one altered share among more than t: caught
        bad = dict((x, shares[x]) for x in subset)
        victim = subset[-1]
        bad[victim] = (int.from_bytes(bad[victim], "big") ^ 1).to_bytes(shamir.SHARE_BYTES, "big")
        with pytest.raises(shamir.ShamirError, match="altered"):
            shamir.combine(bad, threshold=t)


@settings(max_examples=60, deadline=None)
@given(t=st.integers(1, 33),
       xs=st.sets(st.one_of(st.integers(1, 64), st.integers(shamir.PRIME - 2**64, shamir.PRIME - 1)), min_size=33,
                  max_size=33),
       ys=st.lists(st.integers(0, shamir.PRIME - 1), min_size=33, max_size=33))
def test_the_secret_at_zero_equals_the_barycentric_interpolant(t: int, xs: set[int], ys: list[int]) -> None:
    """combine's one-inversion Lagrange at 0 gives what the barycentric interpolant gives, for any points (not only
    polynomials of 32-byte secrets), small holder indices and indices near p alike."""
    points = list(zip(sorted(xs)[:t], ys[:t], strict=True))
    assert shamir._secret_at_zero(points) == shamir._Interpolant(points)(0)


def test_shares_are_the_polynomial_evaluated_at_the_indices() -> None:
    """Known answer: with the coefficients fixed by the rng, share x is s + a1 x + a2 x^2 mod p."""
    stream = iter([(5).to_bytes(66, "big"), (7).to_bytes(66, "big")])
    secret = (123456789).to_bytes(32, "big")
    shares = shamir.split(secret, threshold=3, xs=[1, 2, 10], rng=lambda n: next(stream))
    for x, share in shares.items():
        assert int.from_bytes(share, "big") == (123456789 + 5 * x + 7 * x * x) % shamir.PRIME


def test_t_minus_one_shares_look_uniform_whatever_the_secret() -> None:
    """t - 1 shares of a fixed secret are uniform on the field (they carry no information about it)."""
    secret = b"\x00" * 32
    vals = [int.from_bytes(shamir.split(secret, threshold=3, xs=[1, 2, 3])[2], "big") / shamir.PRIME
            for _ in range(2000)]
    assert stats.kstest(vals, "uniform").pvalue > 1e-4
    # and any candidate secret is consistent with two shares: interpolating them with (0, candidate) works
    shares = shamir.split(os.urandom(32), threshold=3, xs=[4, 9, 11])
    for candidate in (b"\x00" * 32, b"\xff" * 32):
        pts = {4: shares[4], 9: shares[9]}
        poly = shamir._Interpolant([(0, int.from_bytes(candidate, "big")), *((x, int.from_bytes(v, "big"))
                                                                             for x, v in pts.items())])
        assert poly(0) == int.from_bytes(candidate, "big")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"threshold": 0, "xs": [1, 2]}, "threshold"),
    ({"threshold": 3, "xs": [1, 2]}, "threshold"),
    ({"threshold": 2, "xs": [1, 1]}, "distinct"),
    ({"threshold": 2, "xs": [0, 1]}, "index"),
    ({"threshold": 2, "xs": [1, shamir.PRIME]}, "index"),
    ({"threshold": 2, "xs": [1, True]}, "index"),
])
def test_bad_split_parameters_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(shamir.ShamirError, match=match):
        shamir.split(b"\x01" * 32, **kwargs)


def test_bad_secrets_and_shares_are_refused() -> None:
    with pytest.raises(shamir.ShamirError, match="32 bytes"):
        shamir.split(b"\x01" * 16, threshold=1, xs=[1])
    shares = shamir.split(b"\x02" * 32, threshold=2, xs=[1, 2, 3])
    with pytest.raises(shamir.ShamirError, match="66 bytes"):
        shamir.combine({1: shares[1], 2: shares[2][:-1]}, threshold=2)
    with pytest.raises(shamir.ShamirError, match="field element"):
        shamir.combine({1: shares[1], 2: b"\xff" * 66}, threshold=2)
    with pytest.raises(shamir.ShamirError, match="index"):
        shamir.combine({0: shares[1], 2: shares[2]}, threshold=2)
    # a wrong share among exactly t reconstructs garbage: usually not a 32-byte value, which is refused
    wrong = {1: shares[1], 2: (int.from_bytes(shares[2], "big") ^ 1 << 400).to_bytes(66, "big")}
    with pytest.raises(shamir.ShamirError, match="altered"):
        shamir.combine(wrong, threshold=2)


def test_every_pair_of_three_recovers() -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, threshold=2, xs=[3, 5, 8])
    for pair in itertools.combinations(shares, 2):
        assert shamir.combine({x: shares[x] for x in pair}, threshold=2) == secret
    assert np.unique([shares[x] for x in shares]).size == 3
