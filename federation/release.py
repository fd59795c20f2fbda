"""Signed model releases: what the cloud publishes and what gateways relay and devices verify before loading.

A release is a manifest (canonical JSON) plus the raw float32 weights; the Ed25519 signature covers the
manifest, and the manifest pins the weights by SHA-256, so one signature check and one hash check prove both.

A TFLite release is a sibling document under its own signing domain (``TFLITE_DOMAIN``): a manifest pinning
the .tflite file by SHA-256 and size, with the model version, its ``created_at``, a monotonic release
``serial`` (a new one for every promotion and every rollback, so devices can refuse replays of older
releases yet still accept an authorised rollback) and the confidence calibration (residual mean and SD at
+30/+60 min on validation windows). The gateway relays it inside the release JSON under the key ``tflite``.
Format and verification order: docs/release.md.
"""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import asdict, dataclass, fields

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.errors import SchemaError, SignatureError
from federation.signing import sign, verify

RELEASE_DOMAIN = b"wearfed/release/v1\n"
TFLITE_DOMAIN = b"wearfed/release-tflite/v1\n"
TFLITE_FORMAT = "tflite"


class SizeError(SchemaError):
    """A model file is larger than the receiver accepts."""


class DigestError(SignatureError):
    """A file does not match the size or SHA-256 its signed manifest pins (tampered in transit or at rest)."""


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


@dataclass(frozen=True)
class Calibration:
    """Forecast residuals (truth - forecast, mg/dL) on validation windows, per horizon (+30, +60 min)."""

    residual_mean_mgdl: tuple[float, float]
    residual_sd_mgdl: tuple[float, float]
    n_windows: int

    def to_doc(self) -> dict:
        return {"residual_mean_mgdl": list(self.residual_mean_mgdl), "residual_sd_mgdl": list(self.residual_sd_mgdl),
                "n_windows": self.n_windows}

    @classmethod
    def from_doc(cls, doc: object) -> Calibration:
        try:
            mean = tuple(float(v) for v in doc["residual_mean_mgdl"])
            sd = tuple(float(v) for v in doc["residual_sd_mgdl"])
            n = doc["n_windows"]
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"malformed calibration: {exc!r}") from exc
        if len(mean) != 2 or len(sd) != 2 or not all(math.isfinite(v) for v in mean + sd) or min(sd) <= 0:
            raise SchemaError(f"calibration needs two finite means and two positive SDs, got {mean}, {sd}")
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise SchemaError(f"calibration n_windows must be a positive integer, got {n!r}")
        return cls(mean, sd, n)


@dataclass(frozen=True)
class TFLiteManifest:
    """What the TFLite release signature covers (all of it, under TFLITE_DOMAIN)."""

    format: str  # TFLITE_FORMAT
    version: int  # registry model version
    serial: int  # release number, strictly increasing over promotions and rollbacks
    created_at: str  # ISO-8601, the registry's creation time of this version
    architecture: str
    model_hash: str  # H(weights || created_at) of the registry
    tflite_sha256: str
    tflite_bytes: int
    max_abs_diff_mgdl: float  # LiteRT vs torch on the validation windows (export refuses >= 0.1)
    calibration: dict  # Calibration.to_doc()

    @property
    def calib(self) -> Calibration:
        return Calibration.from_doc(self.calibration)


def make_tflite_release(manifest: TFLiteManifest, tflite: bytes, key: Ed25519PrivateKey) -> dict:
    """Sign a TFLite artifact: {"manifest", "signature", "tflite" (base64)}."""
    if hashlib.sha256(tflite).hexdigest() != manifest.tflite_sha256 or len(tflite) != manifest.tflite_bytes:
        raise SchemaError("manifest tflite_sha256/tflite_bytes do not match the file")
    Calibration.from_doc(manifest.calibration)
    doc = asdict(manifest)
    return {"manifest": doc, "signature": sign(key, doc, domain=TFLITE_DOMAIN),
            "tflite": base64.b64encode(tflite).decode("ascii")}


def parse_tflite_manifest(doc: object) -> TFLiteManifest:
    """Schema check of a TFLite manifest (types, format); raises SchemaError."""
    if not isinstance(doc, dict) or set(doc) != {f.name for f in fields(TFLiteManifest)}:
        raise SchemaError(f"malformed TFLite manifest: fields {sorted(doc) if isinstance(doc, dict) else doc!r}")
    m = TFLiteManifest(**doc)
    ints = (m.version, m.serial, m.tflite_bytes)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in ints):
        raise SchemaError(f"version, serial and tflite_bytes must be non-negative integers, got {ints}")
    if m.format != TFLITE_FORMAT:
        raise SchemaError(f"artifact format is {m.format!r}, expected {TFLITE_FORMAT!r}")
    if not all(isinstance(v, str) for v in (m.created_at, m.architecture, m.model_hash, m.tflite_sha256)):
        raise SchemaError("created_at, architecture, model_hash and tflite_sha256 must be strings")
    if not isinstance(m.max_abs_diff_mgdl, (int, float)) or isinstance(m.max_abs_diff_mgdl, bool):
        raise SchemaError("max_abs_diff_mgdl must be a number")
    m.calib  # noqa: B018 - validates the calibration
    return m


def verify_tflite_release(doc: dict, public_key: str, *, max_bytes: int | None = None) -> tuple[TFLiteManifest, bytes]:
    """Return (manifest, tflite bytes) if `doc` is signed by `public_key` and the file matches; else raise.

    Order: schema, signature over the manifest, declared size against `max_bytes`, size of the base64 text
    (before decoding it), decoded size, SHA-256. SizeError (a SchemaError) says a file is too large.
    """
    try:
        raw_manifest, signature, text = doc["manifest"], doc["signature"], doc["tflite"]
    except (KeyError, TypeError) as exc:
        raise SchemaError(f"malformed TFLite release: missing {exc}") from exc
    if not isinstance(signature, str) or not isinstance(text, str):
        raise SchemaError("TFLite release signature and tflite must be strings")
    manifest = parse_tflite_manifest(raw_manifest)
    verify(public_key, raw_manifest, signature, domain=TFLITE_DOMAIN)
    if max_bytes is not None:
        if manifest.tflite_bytes > max_bytes:
            raise SizeError(f"model is {manifest.tflite_bytes} B, the device accepts at most {max_bytes} B")
        if len(text) > 4 * (max_bytes // 3 + 1):
            raise SizeError(f"model text is {len(text)} characters of base64, over {max_bytes} B decoded")
    try:
        tflite = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise SchemaError(f"tflite is not valid base64: {exc}") from exc
    if len(tflite) != manifest.tflite_bytes:
        raise DigestError(f"tflite is {len(tflite)} B, the signed size is {manifest.tflite_bytes} B")
    digest = hashlib.sha256(tflite).hexdigest()
    if digest != manifest.tflite_sha256:
        raise DigestError(f"tflite sha256 {digest} does not match the signed {manifest.tflite_sha256}")
    return manifest, tflite
