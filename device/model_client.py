"""On-device model receiver: verify a signed TFLite release from the gateway's model topic, or refuse it with a reason.

The payload on the retained topic ``wearfed/v1/<gateway>/model`` is the release JSON the gateway relays, with
the TFLite artifact under ``tflite`` (`federation.release`). Checks, in this order, each refusal counted under
its reason (``REASONS``) and reported on the device's retained status topic:

1. ``oversized``      the payload is larger than the profile's ``max_model_bytes`` could ever need (before parsing)
2. ``malformed``      not JSON (NaN/Infinity literals and nesting deeper than the parser's stack included), or the
                      TFLite document or its manifest does not match the schema (any value that cannot be
                      canonically encoded, e.g. NaN, too)
3. ``no-artifact``    a release without a TFLite artifact (the cloud has not exported it)
4. ``unsigned``       the artifact carries no signature
5. ``no-release-key`` the device has no pinned release key, so it cannot verify anything
6. ``bad-signature``  the signature does not verify under the pinned key (wrong key, edited manifest)
7. ``oversized``      the signed size exceeds ``max_model_bytes``
8. ``tampered``       the file's size or SHA-256 differs from the signed manifest (e.g. a flipped bit)
9. ``stale``          release serial <= the loaded one (a replayed or older release; same serial and file: ignored)
10. ``wrong-architecture``, ``unloadable``  not this forecaster, or LiteRT cannot load it

Only then is the model swapped in. The loaded release is kept on disk (a small per-device pointer to a payload
file shared by every device of the process, named by its SHA-256) and re-verified at start-up, so a restarted
device still refuses anything older than what it ran.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from device.errors import DeviceError
from federation import model
from federation.errors import SchemaError, SignatureError
from federation.litert import LiteRTError, TFLiteForecaster
from federation.release import Calibration, DigestError, SizeError, verify_tflite_release
from federation.runtime import atomic_write_bytes

log = logging.getLogger(__name__)
REASONS = ("oversized", "malformed", "no-artifact", "unsigned", "no-release-key", "bad-signature", "tampered",
           "stale", "wrong-architecture", "unloadable")
PAYLOAD_SLACK_BYTES = 256 * 1024  # the base release (raw weights, manifest) travels beside the artifact
_FORECASTERS: dict[str, TFLiteForecaster] = {}  # one interpreter per distinct file in this process (sha256)


class ModelRefused(DeviceError):
    """A release was refused; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class LoadedModel:
    version: int
    serial: int
    sha256: str
    calibration: Calibration
    forecaster: TFLiteForecaster


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def max_payload_bytes(max_bytes: int) -> int:
    """The largest model-topic payload a device with a `max_bytes` model limit accepts (base64 + the base release)."""
    return 4 * (max_bytes // 3 + 1) + PAYLOAD_SLACK_BYTES


def check_release(payload: bytes, *, public_key: str | None, max_bytes: int,
                  current: LoadedModel | None = None) -> LoadedModel | None:
    """Verify a model-topic payload; the model to load, None for a redelivery of the loaded one, else ModelRefused."""
    limit = max_payload_bytes(max_bytes)
    if len(payload) > limit:
        raise ModelRefused("oversized", f"payload of {len(payload)} B exceeds {limit} B for a {max_bytes} B model")
    try:
        doc = json.loads(payload, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelRefused("malformed", f"not JSON: {exc}") from exc
    except RecursionError as exc:
        raise ModelRefused("malformed", "not JSON: nested deeper than the parser allows") from exc
    if not isinstance(doc, dict):
        raise ModelRefused("malformed", "the release is not a JSON object")
    artifact = doc.get("tflite")
    if artifact is None:
        raise ModelRefused("no-artifact", "the release carries no TFLite artifact yet")
    if not isinstance(artifact, dict):
        raise ModelRefused("malformed", "tflite is not an object")
    if not artifact.get("signature"):
        raise ModelRefused("unsigned", "the TFLite artifact has no signature")
    if not public_key:
        raise ModelRefused("no-release-key", "no release public key is pinned on this device")
    try:
        manifest, tflite = verify_tflite_release(artifact, public_key, max_bytes=max_bytes)
    except SizeError as exc:
        raise ModelRefused("oversized", str(exc)) from exc
    except SchemaError as exc:
        raise ModelRefused("malformed", str(exc)) from exc
    except DigestError as exc:
        raise ModelRefused("tampered", str(exc)) from exc
    except SignatureError as exc:
        raise ModelRefused("bad-signature", str(exc)) from exc
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:  # e.g. a value JSON cannot encode
        raise ModelRefused("malformed", f"{type(exc).__name__}: {exc}") from exc
    if current is not None:
        if manifest.serial == current.serial and manifest.tflite_sha256 == current.sha256:
            return None
        if manifest.serial <= current.serial:
            raise ModelRefused("stale", f"release {manifest.serial} (model v{manifest.version}) is not newer than "
                                        f"the loaded release {current.serial} (v{current.version})")
    if manifest.architecture != model.ARCHITECTURE:
        raise ModelRefused("wrong-architecture", f"{manifest.architecture}, this device runs {model.ARCHITECTURE}")
    try:
        forecaster = _FORECASTERS.get(manifest.tflite_sha256) or TFLiteForecaster(tflite)
    except LiteRTError as exc:
        raise ModelRefused("unloadable", str(exc)) from exc
    _FORECASTERS[manifest.tflite_sha256] = forecaster
    return LoadedModel(manifest.version, manifest.serial, manifest.tflite_sha256, manifest.calib, forecaster)


class ModelClient:
    """One device's model state: the loaded release, refusals by reason, the last refusal; persisted."""

    def __init__(self, device_id: str, *, public_key: str | None, max_bytes: int,
                 state_path: Path | None = None) -> None:
        self.device_id, self.public_key, self.max_bytes = device_id, public_key, max_bytes
        self.state_path = state_path
        self.loaded: LoadedModel | None = None
        self.refusals: Counter[str] = Counter()
        self.last_refusal: dict | None = None
        if not public_key:
            log.warning("%s: no release key pinned: every model release will be refused", device_id)
        if state_path is not None and state_path.exists():
            self.receive(self._read_persisted(state_path), persist=False)

    def receive(self, payload: bytes, *, persist: bool = True) -> bool:
        """Handle one model-topic payload; True if a new model was loaded (refusals are counted, not raised)."""
        try:
            new = check_release(payload, public_key=self.public_key, max_bytes=self.max_bytes, current=self.loaded)
        except ModelRefused as exc:
            self.refuse(exc.reason, exc.detail)
            return False
        except Exception as exc:  # a check that failed in an unforeseen way still refuses, counted and reported
            log.exception("%s: model release check failed", self.device_id)
            self.refuse("malformed", f"check failed: {type(exc).__name__}: {exc}")
            return False
        if new is None:
            return False
        self.loaded = new
        if persist and self.state_path is not None:
            self._persist(payload)
        log.info("%s: loaded model v%d (release %d, %s)", self.device_id, new.version, new.serial,
                 new.forecaster.runtime)
        return True

    def refuse(self, reason: str, detail: str) -> None:
        """Count a refused release under `reason` (one of REASONS); the status topic reports it."""
        self.refusals[reason] += 1
        self.last_refusal = {"reason": reason, "detail": detail[:200]}
        log.warning("%s: model release refused (%s): %s", self.device_id, reason, detail[:500])

    def _blob(self, digest: str) -> Path:
        return self.state_path.parent / "blobs" / f"{digest}.json"

    def _persist(self, payload: bytes) -> None:
        digest = hashlib.sha256(payload).hexdigest()
        blob = self._blob(digest)
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            atomic_write_bytes(blob, payload)
        atomic_write_bytes(self.state_path, json.dumps({"payload_sha256": digest}).encode())

    def _read_persisted(self, path: Path) -> bytes:
        """The payload the pointer names (any damage surfaces as a refusal when it is verified again)."""
        try:
            return self._blob(json.loads(path.read_text())["payload_sha256"]).read_bytes()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"unreadable persisted release: {exc}".encode()

    def status(self) -> dict:
        """Status fields: what is loaded and what was refused (never any reading)."""
        m = self.loaded
        return {"model": None if m is None else {"version": m.version, "serial": m.serial, "sha256": m.sha256,
                                                  "runtime": m.forecaster.runtime},
                "model_refusals": dict(sorted(self.refusals.items())), "last_refusal": self.last_refusal}


