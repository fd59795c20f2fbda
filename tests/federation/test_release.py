"""Signed model releases: a valid release verifies; any tampering, or the wrong key, is refused."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.errors import SchemaError, SignatureError
from federation.release import ReleaseManifest, make_release, verify_release
from federation.signing import public_key_b64

WEIGHTS = bytes(range(256)) * 4


@pytest.fixture
def signed() -> tuple[dict, str]:
    key = Ed25519PrivateKey.generate()
    manifest = ReleaseManifest(version=3, architecture="mlp", model_hash="ab" * 32,
                               weights_sha256=hashlib.sha256(WEIGHTS).hexdigest(),
                               created_at="2026-01-01T00:00:00+00:00", round=3)
    return make_release(manifest, WEIGHTS, key), public_key_b64(key)


def test_valid_release_verifies(signed) -> None:  # noqa: ANN001
    release, pub = signed
    manifest, weights = verify_release(release, pub)
    assert manifest.version == 3 and weights == WEIGHTS


def test_wrong_key_is_refused(signed) -> None:  # noqa: ANN001
    release, _ = signed
    with pytest.raises(SignatureError):
        verify_release(release, public_key_b64(Ed25519PrivateKey.generate()))


def test_tampered_weights_are_refused(signed) -> None:  # noqa: ANN001
    release, pub = signed
    w = bytearray(WEIGHTS)
    w[7] ^= 1
    with pytest.raises(SignatureError, match="sha256"):
        verify_release({**release, "weights": base64.b64encode(bytes(w)).decode()}, pub)


def test_tampered_manifest_is_refused(signed) -> None:  # noqa: ANN001
    release, pub = signed
    with pytest.raises(SignatureError):
        verify_release({**release, "manifest": {**release["manifest"], "version": 4}}, pub)


@pytest.mark.parametrize("broken", [{}, {"manifest": {}, "weights": "", "signature": ""},
                                    {"manifest": {"version": 1}, "weights": "!!", "signature": "x"}])
def test_malformed_release_is_a_schema_error(broken: dict) -> None:
    with pytest.raises(SchemaError):
        verify_release(broken, "AAAA")


def test_manifest_must_match_weights() -> None:
    manifest = ReleaseManifest(version=1, architecture="mlp", model_hash="0" * 64, weights_sha256="0" * 64,
                               created_at="2026-01-01T00:00:00+00:00", round=None)
    with pytest.raises(SchemaError):
        make_release(manifest, WEIGHTS, Ed25519PrivateKey.generate())
