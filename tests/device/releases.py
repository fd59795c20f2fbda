"""Real signed model-topic payloads for device tests: the checked-in exported model, signed with a test key.

tests/data/releases/ holds forecaster.npy (fitted weights), forecaster.tflite (its litert-torch export) and
calibration.json, written by ``python -m bench.device_inference --write-test-model tests/data/releases``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation import model
from federation.release import ReleaseManifest, TFLiteManifest, make_release, make_tflite_release

DATA = Path(__file__).resolve().parents[1] / "data" / "releases"
TFLITE = (DATA / "forecaster.tflite").read_bytes()
WEIGHTS = np.load(DATA / "forecaster.npy")
CALIBRATION = json.loads((DATA / "calibration.json").read_text())["calibration"]


def release_doc(key: Ed25519PrivateKey, *, serial: int, version: int | None = None, tflite: bytes = TFLITE,
                architecture: str = model.ARCHITECTURE, calibration: dict | None = None) -> dict:
    """The JSON a gateway relays: the signed base release plus the signed TFLite artifact under "tflite"."""
    version = serial if version is None else version
    created = f"2026-01-{1 + version % 28:02d}T00:00:00+00:00"
    raw = WEIGHTS.tobytes()
    base = make_release(ReleaseManifest(version=version, architecture=architecture, model_hash="ab" * 32,
                                        weights_sha256=hashlib.sha256(raw).hexdigest(), created_at=created,
                                        round=version), raw, key)
    tfl = TFLiteManifest(format="tflite", version=version, serial=serial, created_at=created,
                         architecture=architecture, model_hash="ab" * 32,
                         tflite_sha256=hashlib.sha256(tflite).hexdigest(), tflite_bytes=len(tflite),
                         max_abs_diff_mgdl=0.0005, calibration=calibration or CALIBRATION)
    return {**base, "tflite": make_tflite_release(tfl, tflite, key)}


def payload(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def bit_flipped(doc: dict, *, bit: int = 8 * 1000 + 3) -> dict:
    """The same signed release with one bit of the .tflite file flipped (the manifest untouched)."""
    data = bytearray(base64.b64decode(doc["tflite"]["tflite"]))
    data[bit // 8] ^= 1 << (bit % 8)
    return {**doc, "tflite": {**doc["tflite"], "tflite": base64.b64encode(bytes(data)).decode()}}
