"""Signed model releases: what the cloud publishes and what gateways relay and devices verify before loading.

A release is a manifest (canonical JSON) plus the raw float32 weights; the Ed25519 signature covers the
manifest, and the manifest pins the weights by SHA-256, so one signature check and one hash check prove both.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import asdict, dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.errors import SchemaError, SignatureError
from federation.signing import sign, verify

RELEASE_DOMAIN = b"wearfed/release/v1\n"


@dataclass(frozen=True)
class ReleaseManifest:
    version: int
    architecture: str
    model_hash: str  # H(weights || created_at), the registry's identity of this version
    weights_sha256: str
    created_at: str  # ISO-8601
    round: int | None


def make_release(manifest: ReleaseManifest, weights: bytes, key: Ed25519PrivateKey) -> dict:
    if hashlib.sha256(weights).hexdigest() != manifest.weights_sha256:
        raise SchemaError("manifest weights_sha256 does not match the weights")
    doc = asdict(manifest)
    return {"manifest": doc, "signature": sign(key, doc, domain=RELEASE_DOMAIN),
            "weights": base64.b64encode(weights).decode("ascii")}


def verify_release(release: dict, public_key: str) -> tuple[ReleaseManifest, bytes]:
    """Return (manifest, weights) if the release is signed by `public_key` and the weights match; else raise."""
    try:
        manifest = ReleaseManifest(**release["manifest"])
        weights = base64.b64decode(release["weights"], validate=True)
        signature = release["signature"]
    except (KeyError, TypeError, ValueError) as exc:
        raise SchemaError(f"malformed release: {exc}") from exc
    verify(public_key, release["manifest"], signature, domain=RELEASE_DOMAIN)
    digest = hashlib.sha256(weights).hexdigest()
    if digest != manifest.weights_sha256:
        raise SignatureError(f"weights sha256 {digest} does not match the signed {manifest.weights_sha256}")
    return manifest, weights
