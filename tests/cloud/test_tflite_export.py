"""TFLite export with litert-torch: LiteRT agrees with torch on real validation windows, or nothing is released."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud import tflite_export
from federation import model
from federation.errors import SchemaError
from federation.litert import TFLiteForecaster
from federation.release import TFLiteManifest, make_tflite_release, verify_tflite_release
from federation.signing import public_key_b64

DATA = Path(__file__).resolve().parents[1] / "data" / "releases"


@pytest.fixture(scope="module")
def exported() -> tuple[np.ndarray, tflite_export.Export]:
    weights = np.load(DATA / "forecaster.npy")
    x, y = tflite_export.load_validation()
    return weights, tflite_export.export_checked(weights, x, y)


def test_export_agrees_with_torch_and_numpy_on_validation_windows(exported) -> None:  # noqa: ANN001
    weights, ex = exported
    x, y = tflite_export.load_validation()
    assert len(x) > 1000  # real held-out windows, not a handful
    assert ex.max_abs_diff_mgdl < tflite_export.MAX_ABS_DIFF_MGDL
    assert len(ex.tflite) < 200_000  # DESIGN.md: <= 200 KB as TFLite
    lite = TFLiteForecaster(ex.tflite).predict(x[:200])
    assert np.max(np.abs(lite - model.predict(weights, x[:200]))) < tflite_export.MAX_ABS_DIFF_MGDL
    assert np.max(np.abs(lite - tflite_export.torch_forecast(weights, x[:200]))) <= ex.max_abs_diff_mgdl + 1e-9
    # calibration: the residuals of this model on these windows
    resid = y - model.predict(weights, x)
    assert np.allclose(ex.calibration.residual_sd_mgdl, resid.std(axis=0, ddof=1), atol=1e-3)
    assert np.allclose(ex.calibration.residual_mean_mgdl, resid.mean(axis=0), atol=1e-3)
    assert ex.calibration.n_windows == len(x)


def test_a_file_that_disagrees_with_torch_is_refused(exported) -> None:  # noqa: ANN001
    _, ex = exported
    x, y = tflite_export.load_validation()
    other = model.init_weights(seed=99)  # the torch model of other weights: the file no longer matches it
    with pytest.raises(tflite_export.AgreementError, match="differ by up to"):
        tflite_export.export_checked(other, x, y, tflite=ex.tflite)
    # and the check is a real bound: the same file passes for its own weights
    weights = np.load(DATA / "forecaster.npy")
    assert tflite_export.export_checked(weights, x, y, tflite=ex.tflite).max_abs_diff_mgdl < 0.1


def test_checked_in_test_model_matches_its_weights(exported) -> None:  # noqa: ANN001
    """tests/data/releases/forecaster.tflite (used by the device tests) is the export of forecaster.npy."""
    weights, _ = exported
    x, _ = tflite_export.load_validation()
    data = (DATA / "forecaster.tflite").read_bytes()
    assert tflite_export.max_abs_diff(weights, data, x) < tflite_export.MAX_ABS_DIFF_MGDL
    cal = json.loads((DATA / "calibration.json").read_text())["calibration"]
    assert cal["n_windows"] == len(x)


@pytest.mark.parametrize("content", ["missing", "wrong-shape", "nan", "not-npz"])
def test_bad_validation_windows_are_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "v.npz"
    if content == "wrong-shape":
        np.savez(path, x=np.zeros((10, 12)), y=np.zeros((10, 2)))
    elif content == "nan":
        np.savez(path, x=np.full((10, 24), np.nan), y=np.zeros((10, 2)))
    elif content == "not-npz":
        path.write_bytes(b"not a zip")
    with pytest.raises(SchemaError):
        tflite_export.load_validation(path)


def test_signed_tflite_manifest_covers_sha256_version_and_created_at(exported) -> None:  # noqa: ANN001
    _, ex = exported
    key = Ed25519PrivateKey.generate()
    manifest = TFLiteManifest(format="tflite", version=4, serial=2, created_at="2026-01-01T00:00:00+00:00",
                              architecture=model.ARCHITECTURE, model_hash="ab" * 32,
                              tflite_sha256=hashlib.sha256(ex.tflite).hexdigest(), tflite_bytes=len(ex.tflite),
                              max_abs_diff_mgdl=ex.max_abs_diff_mgdl, calibration=ex.calibration.to_doc())
    doc = make_tflite_release(manifest, ex.tflite, key)
    got, data = verify_tflite_release(doc, public_key_b64(key))
    assert got == manifest and data == ex.tflite
    for field, value in (("version", 5), ("created_at", "2026-01-02T00:00:00+00:00"), ("tflite_sha256", "0" * 64),
                         ("serial", 3), ("calibration", {**ex.calibration.to_doc(), "residual_sd_mgdl": [1.0, 1.0]})):
        forged = {**doc, "manifest": {**doc["manifest"], field: value}}
        with pytest.raises(Exception, match="signature"):
            verify_tflite_release(forged, public_key_b64(key))
    with pytest.raises(SchemaError):  # a file that does not match what is declared is never signed
        make_tflite_release(manifest, ex.tflite + b"\0", key)
