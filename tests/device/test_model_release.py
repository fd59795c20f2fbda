"""Device model receiver: a real signed TFLite release loads; every kind of bad release is refused, with its reason."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.model_client import REASONS, ModelClient, ModelRefused, check_release
from device.profiles import load_profile
from federation import model
from federation.signing import public_key_b64
from tests.device.releases import TFLITE, WEIGHTS, bit_flipped, payload, release_doc

KEY = Ed25519PrivateKey.generate()
PUB = public_key_b64(KEY)
MAX_BYTES = load_profile("pi-zero-2w").max_model_bytes


def refused(data: bytes, *, key: str | None = PUB, max_bytes: int = MAX_BYTES, current=None) -> str:  # noqa: ANN001
    with pytest.raises(ModelRefused) as info:
        check_release(data, public_key=key, max_bytes=max_bytes, current=current)
    assert info.value.reason in REASONS
    return info.value.reason


def test_a_signed_release_loads_and_runs_the_same_forecasts_as_numpy() -> None:
    loaded = check_release(payload(release_doc(KEY, serial=2)), public_key=PUB, max_bytes=MAX_BYTES)
    assert (loaded.version, loaded.serial) == (2, 2)
    x = np.concatenate([np.linspace(180, 90, model.HISTORY_STEPS), model.INPUT_SCALE[model.HISTORY_STEPS:] * 0.7])
    got = loaded.forecaster.predict_one(x)
    assert np.max(np.abs(got - model.predict(WEIGHTS, x[None, :])[0])) < 0.1
    assert loaded.calibration.residual_sd_mgdl[0] > 0
    # the same release delivered again (retained message after a reconnect) is a no-op, not a refusal
    assert check_release(payload(release_doc(KEY, serial=2)), public_key=PUB, max_bytes=MAX_BYTES,
                         current=loaded) is None


def _unsigned(doc: dict) -> dict:
    return {**doc, "tflite": {k: v for k, v in doc["tflite"].items() if k != "signature"}}


def _manifest_edit(doc: dict) -> dict:  # raise the serial without the key
    return {**doc, "tflite": {**doc["tflite"], "manifest": {**doc["tflite"]["manifest"], "serial": 99}}}


def _calibration_edit(doc: dict) -> dict:  # make every alert look certain
    m = doc["tflite"]["manifest"]
    return {**doc, "tflite": {**doc["tflite"], "manifest": {**m, "calibration": {**m["calibration"],
                                                                                  "residual_sd_mgdl": [0.01, 0.01]}}}}


def _truncated(doc: dict) -> dict:
    data = base64.b64decode(doc["tflite"]["tflite"])[:-100]
    return {**doc, "tflite": {**doc["tflite"], "tflite": base64.b64encode(data).decode()}}


@pytest.mark.parametrize(("case", "reason"), [
    ("unsigned", "unsigned"),
    ("bit-flipped file", "tampered"),
    ("truncated file", "tampered"),
    ("wrong key", "bad-signature"),
    ("edited manifest", "bad-signature"),
    ("edited calibration", "bad-signature"),
    ("no artifact", "no-artifact"),
    ("no key pinned", "no-release-key"),
    ("not json", "malformed"),
    ("json list", "malformed"),
    ("manifest missing field", "malformed"),
    ("tflite not base64", "malformed"),
    ("wrong architecture", "wrong-architecture"),
    ("not a tflite file", "unloadable"),
])
def test_bad_releases_are_refused_with_their_reason(case: str, reason: str) -> None:
    good = release_doc(KEY, serial=3)
    key = PUB
    if case == "unsigned":
        data = payload(_unsigned(good))
    elif case == "bit-flipped file":
        data = payload(bit_flipped(good))
    elif case == "truncated file":
        data = payload(_truncated(good))
    elif case == "wrong key":
        data = payload(release_doc(Ed25519PrivateKey.generate(), serial=3))
    elif case == "edited manifest":
        data = payload(_manifest_edit(good))
    elif case == "edited calibration":
        data = payload(_calibration_edit(good))
    elif case == "no artifact":
        data = payload({k: v for k, v in good.items() if k != "tflite"})
    elif case == "no key pinned":
        data, key = payload(good), None
    elif case == "not json":
        data = payload(good)[:-7]
    elif case == "json list":
        data = b"[1, 2, 3]"
    elif case == "manifest missing field":
        m = {k: v for k, v in good["tflite"]["manifest"].items() if k != "serial"}
        data = payload({**good, "tflite": {**good["tflite"], "manifest": m}})
    elif case == "tflite not base64":
        data = payload({**good, "tflite": {**good["tflite"], "tflite": "!!not base64!!"}})
    elif case == "wrong architecture":
        data = payload(release_doc(KEY, serial=3, architecture="gru-1-32"))
    else:  # correctly signed, but the bytes are not a model LiteRT can load
        data = payload(release_doc(KEY, serial=3, tflite=b"TFL3" + bytes(4000)))
    assert refused(data, key=key) == reason


def test_oversized_releases_are_refused_before_loading() -> None:
    small = len(TFLITE) - 1
    assert refused(payload(release_doc(KEY, serial=3)), max_bytes=small) == "oversized"
    # a payload far larger than any model this device accepts is refused before it is parsed
    huge = b'{"tflite": "' + b"A" * (MAX_BYTES * 2) + b'"}'
    assert refused(huge) == "oversized"
    # a real profile limit: dexcom-g7 and libre-3 take no model at all (max_model_bytes = 0)
    assert load_profile("dexcom-g7").max_model_bytes == 0


def test_older_and_replayed_releases_are_refused() -> None:
    current = check_release(payload(release_doc(KEY, serial=5)), public_key=PUB, max_bytes=MAX_BYTES)
    assert refused(payload(release_doc(KEY, serial=4)), current=current) == "stale"  # validly signed, older
    # same serial, another (validly signed) file: a replay under a used serial
    other = release_doc(KEY, serial=5, tflite=TFLITE + b"\0")
    assert refused(payload(other), current=current) == "stale"
    # a rollback is a new serial carrying an older model version: accepted
    back = check_release(payload(release_doc(KEY, serial=6, version=1)), public_key=PUB, max_bytes=MAX_BYTES,
                         current=current)
    assert (back.version, back.serial) == (1, 6)


def test_model_client_counts_refusals_and_keeps_its_model_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "models" / "dev.json"
    client = ModelClient("dev", public_key=PUB, max_bytes=MAX_BYTES, state_path=path)
    assert client.receive(payload(release_doc(KEY, serial=4)))
    assert not client.receive(payload(bit_flipped(release_doc(KEY, serial=5))))
    assert not client.receive(payload(release_doc(KEY, serial=3)))
    assert not client.receive(payload(release_doc(KEY, serial=4)))  # redelivery: neither loaded nor refused
    st = client.status()
    assert st["model"]["serial"] == 4 and st["model_refusals"] == {"stale": 1, "tampered": 1}
    assert st["last_refusal"]["reason"] == "stale"
    again = ModelClient("dev", public_key=PUB, max_bytes=MAX_BYTES, state_path=path)
    assert again.loaded.serial == 4  # re-verified from disk
    assert not again.receive(payload(release_doc(KEY, serial=2)))  # still refuses older releases after restart
    # the payload is stored once for every device of the process, named by its SHA-256
    blobs = list((path.parent / "blobs").iterdir())
    assert len(blobs) == 1 and json.loads(path.read_text())["payload_sha256"] == blobs[0].stem
    other = ModelClient("dev-2", public_key=PUB, max_bytes=MAX_BYTES, state_path=path.parent / "dev-2.json")
    assert other.receive(payload(release_doc(KEY, serial=4))) and len(list((path.parent / "blobs").iterdir())) == 1
    # a model file altered on disk is not loaded at start-up
    blobs[0].write_bytes(payload(bit_flipped(json.loads(blobs[0].read_bytes()))))
    tampered = ModelClient("dev", public_key=PUB, max_bytes=MAX_BYTES, state_path=path)
    assert tampered.loaded is None and tampered.refusals == {"tampered": 1}
