"""Shamir secret sharing (Shamir, "How to share a secret", CACM 1979) of 32-byte secrets over the prime field
GF(p), p = 2**521 - 1 (the Mersenne prime M521, Robinson 1952), for secure aggregation's mask seeds and keys.

A secret s (32 bytes, read big-endian as an integer < 2**256 < p) is the constant term of a polynomial
f(x) = s + a_1 x + ... + a_{t-1} x^{t-1} with a_k uniform in GF(p) (rejection sampling from the OS CSPRNG, so
exactly uniform); holder x (an integer 1 <= x < p, distinct per holder) gets f(x). Any t shares give s back by
Lagrange interpolation at 0, f(0) = sum_j y_j prod_{m != j} x_m / (x_m - x_j); any t - 1 shares are consistent
with every secret (for each candidate s there is exactly one polynomial of degree < t through the t - 1 points
and (0, s)), so they reveal nothing. Shares are 66 bytes (ceil(521 / 8)).

Why not pycryptodome's `Shamir` (GF(2^128), used by `cloud.custody` for the custodians' key): it shares 16-byte
secrets, so a 32-byte seed needs two splits, and it interpolates in pure-Python GF(2^128) arithmetic: rebuilding
one 32-byte secret from 17 shares took 15-80 ms here against 0.07 ms with this module (`python -m bench.crypto`
prints both, same run; 2026-12-04), i.e. 0.8-4 s per round for the 50 secrets a 50-participant round rebuilds,
more than the whole training round it protects.

Shamir shares carry no integrity: a wrong share reconstructs a wrong secret. `combine` therefore checks, when it
is given more than t shares, that every extra share lies on the interpolated polynomial, and callers compare the
result against a public commitment (secure aggregation: SHA-256 of the seed, the X25519 public key of a key).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping

from federation.errors import WearfedError

PRIME = 2**521 - 1  # M521, a Mersenne prime (Robinson 1952); > 2**256, so any 32-byte secret is a field element
SECRET_BYTES = 32
SHARE_BYTES = (PRIME.bit_length() + 7) // 8  # 66


class ShamirError(WearfedError):
    """Shares that cannot be split or combined: too few, duplicated, out of range, or not on one polynomial."""


def _uniform_element(rng: Callable[[int], bytes]) -> int:
    """A uniform element of GF(p) by rejection sampling of 521-bit strings (rejects with probability 2**-521)."""
    while True:
        value = int.from_bytes(rng(SHARE_BYTES), "big") & PRIME  # keep the low 521 bits: uniform on [0, 2**521)
        if value < PRIME:
            return value


def _check_x(x: int) -> None:
    if not isinstance(x, int) or isinstance(x, bool) or not 0 < x < PRIME:
        raise ShamirError(f"share index {x!r} is not an integer in [1, p)")


def split(secret: bytes, *, threshold: int, xs: Iterable[int],
          rng: Callable[[int], bytes] = secrets.token_bytes) -> dict[int, bytes]:
    """Shares of a 32-byte secret for holders `xs` (distinct, in [1, p)); any `threshold` of them recover it."""
    if len(secret) != SECRET_BYTES:
        raise ShamirError(f"secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    holders = list(xs)
    for x in holders:
        _check_x(x)
    if len(set(holders)) != len(holders):
        raise ShamirError(f"share indices are not distinct: {sorted(holders)}")
    if not 1 <= threshold <= len(holders):
        raise ShamirError(f"need 1 <= threshold <= holders, got threshold {threshold} for {len(holders)} holders")
    coeffs = [int.from_bytes(secret, "big")] + [_uniform_element(rng) for _ in range(threshold - 1)]
    out = {}
    for x in holders:
        y = 0
        for c in reversed(coeffs):  # Horner's rule
            y = (y * x + c) % PRIME
        out[x] = y.to_bytes(SHARE_BYTES, "big")
    return out


def _batch_inverse(values: list[int]) -> list[int]:
    """Inverses of nonzero field elements with one modular inversion (Montgomery's trick)."""
    prefix, acc = [], 1
    for v in values:
        prefix.append(acc)
        acc = acc * v % PRIME
    inv = pow(acc, -1, PRIME)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = inv * prefix[i] % PRIME
        inv = inv * values[i] % PRIME
    return out


class _Interpolant:
    """The polynomial of degree < t through t points, in barycentric form (weights computed once), evaluated
    anywhere with O(t) multiplications and one inversion: L(a) = l(a) sum_j w_j y_j / (a - x_j),
    l(a) = prod_m (a - x_m), w_j = 1 / prod_{m != j} (x_j - x_m) (Berrut and Trefethen, SIAM Review 2004)."""

    def __init__(self, points: list[tuple[int, int]]) -> None:
        self.xs = [x for x, _y in points]
        self.ys = [y for _x, y in points]
        dens = []
        for j, xj in enumerate(self.xs):
            den = 1
            for m, xm in enumerate(self.xs):
                if m != j:
                    den = den * (xj - xm) % PRIME
            dens.append(den)
        self.weights = _batch_inverse(dens)

    def __call__(self, at: int) -> int:
        if at in self.xs:
            return self.ys[self.xs.index(at)]
        diffs = [(at - x) % PRIME for x in self.xs]
        l_at = 1
        for d in diffs:
            l_at = l_at * d % PRIME
        inv = _batch_inverse(diffs)
        return l_at * sum(w * y * i for w, y, i in zip(self.weights, self.ys, inv, strict=True)) % PRIME


def _secret_at_zero(points: list[tuple[int, int]]) -> int:
    """f(0) of the polynomial of degree < t through t points: Lagrange at 0 over one common denominator,
    f(0) = prod_m x_m * sum_j y_j / w_j with w_j = x_j prod_{m != j} (x_m - x_j), computed as exact integers and
    reduced mod p once, one modular inversion of W = prod_j w_j (nonzero mod p: distinct x in [1, p)). Equal to
    `_Interpolant(points)(0)`, about three times faster for small holder indices (one per round and owner)."""
    xs = [x for x, _y in points]
    ws = []
    for xj in xs:
        w = xj
        for xm in xs:
            if xm != xj:
                w *= xm - xj
        ws.append(w)
    num, big_w = 1, 1
    for x, w in zip(xs, ws, strict=True):
        num *= x
        big_w *= w
    total = sum(y * (big_w // w) for (_x, y), w in zip(points, ws, strict=True))
    return num % PRIME * (total % PRIME) % PRIME * pow(big_w % PRIME, -1, PRIME) % PRIME


def _parse(shares: Mapping[int, bytes]) -> list[tuple[int, int]]:
    points = []
    for x, share in sorted(shares.items()):
        _check_x(x)
        if not isinstance(share, bytes | bytearray) or len(share) != SHARE_BYTES:
            raise ShamirError(f"share {x} is not {SHARE_BYTES} bytes")
        y = int.from_bytes(share, "big")
        if y >= PRIME:
            raise ShamirError(f"share {x} is not a field element")
        points.append((x, y))
    return points


def combine(shares: Mapping[int, bytes], *, threshold: int, check_extra: bool = True) -> bytes:
    """The secret from at least `threshold` shares {x: share}; with `check_extra`, any further share must lie on
    the same polynomial (the lowest `threshold` indices define it)."""
    if threshold < 1:
        raise ShamirError(f"threshold must be >= 1, got {threshold}")
    points = _parse(shares)
    if len(points) < threshold:
        raise ShamirError(f"{len(points)} share(s) given, {threshold} needed")
    base, extra = points[:threshold], points[threshold:]
    if check_extra and extra:
        poly = _Interpolant(base)
        for x, y in extra:
            if poly(x) != y:
                raise ShamirError(f"share {x} does not lie on the polynomial of shares {[p[0] for p in base]}: "
                                  "a share was altered")
    secret = _secret_at_zero(base)
    if secret >= 2 ** (8 * SECRET_BYTES):
        raise ShamirError("the shares do not interpolate to a 32-byte secret: a share was altered")
    return secret.to_bytes(SECRET_BYTES, "big")
