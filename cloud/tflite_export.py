"""Export a forecaster version to TFLite with litert-torch, refusing it unless LiteRT agrees with torch.

The exported graph wraps `federation.model.to_torch` with the standardisation, so it maps mg/dL to mg/dL.
Agreement: the LiteRT forecasts on the validation windows must be within `MAX_ABS_DIFF_MGDL` of torch's,
else `AgreementError` and no release. The same windows give the confidence calibration: the mean and SD of
(target - forecast) at +30/+60 min (a Gaussian residual model, our choice; see docs/release.md).

Validation windows are real held-out windows: `load_validation(path)` reads an .npz with ``x`` (n, N_INPUTS)
model inputs (24 glucose values in mg/dL, then the insulin/carb/time features) and ``y`` (n, 2) in mg/dL; the
packaged default (cloud/data/validation_windows.npz) was written from the
simulator's held-out UVA/Padova patients by ``python -m bench.device_inference --write-validation PATH``.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from federation import model
from federation.errors import SchemaError, WearfedError
from federation.litert import TFLiteForecaster
from federation.release import Calibration

log = logging.getLogger(__name__)
MAX_ABS_DIFF_MGDL = 0.1  # issue 8: LiteRT must agree with torch within 0.1 mg/dL on validation windows
DEFAULT_VALIDATION = Path(__file__).resolve().parent / "data" / "validation_windows.npz"
EXPORTER = "litert-torch"
INSTALL_HINT = "pip install 'wearfed[export]' (litert-torch==0.10.0)"


class ExportError(WearfedError):
    """A version could not be exported to TFLite."""


class ExporterMissing(ExportError):
    """litert-torch is not installed on this node."""


class AgreementError(ExportError):
    """LiteRT's forecasts differ from torch's by too much: the artifact is not released."""


@dataclass(frozen=True)
class Export:
    tflite: bytes
    max_abs_diff_mgdl: float
    calibration: Calibration


def exporter_missing() -> str | None:
    """None if litert-torch can be imported here, else the reason (with the install command)."""
    if importlib.util.find_spec("litert_torch") is None:
        return f"litert-torch is not installed: {INSTALL_HINT}"
    return None


def warm_up() -> None:
    """Import the converter's heavy modules (seconds), so the first promotion's export does not wait for them."""
    if exporter_missing() is None:
        import litert_torch  # noqa: F401
        import torch  # noqa: F401


def load_validation(path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(x (n, N_INPUTS), y (n, 2)) validation windows from an .npz; the packaged set by default."""
    path = Path(path or DEFAULT_VALIDATION)
    try:
        with np.load(path) as doc:
            x, y = np.asarray(doc["x"], dtype=np.float64), np.asarray(doc["y"], dtype=np.float64)
    except (OSError, KeyError, ValueError) as exc:
        raise SchemaError(f"cannot read validation windows from {path}: {exc}") from exc
    if x.ndim != 2 or x.shape[1] != model.N_INPUTS or y.shape != (len(x), len(model.HORIZON_STEPS)) \
            or len(x) == 0 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise SchemaError(f"{path}: need finite x (n, {model.N_INPUTS}) and y (n, 2), n > 0, for "
                          f"{model.ARCHITECTURE}; got {x.shape}, {y.shape}")
    return x, y


def torch_module(weights: np.ndarray):  # -> torch.nn.Module mapping raw inputs (n, N_INPUTS) to mg/dL (n, 2)
    """The forecaster with its standardisation inside, as exported (imports torch)."""
    import torch

    class MgdlForecaster(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model.to_torch(weights)
            self.register_buffer("center", torch.from_numpy(model.INPUT_CENTER.copy()))
            self.register_buffer("scale", torch.from_numpy(model.INPUT_SCALE.copy()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = (x - self.center) / self.scale
            return self.inner(z) * model.GLUCOSE_SCALE + model.GLUCOSE_CENTER

    return MgdlForecaster().eval()


def torch_forecast(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch_module(weights)(torch.tensor(np.asarray(x, dtype=np.float32))).numpy().astype(np.float64)


def convert(weights: np.ndarray) -> bytes:
    """The .tflite bytes of this weight vector (litert-torch; a fixed input of shape (1, N_INPUTS))."""
    reason = exporter_missing()
    if reason:
        raise ExporterMissing(reason)
    import litert_torch
    import torch

    sample = (torch.from_numpy(model.INPUT_CENTER.copy()).reshape(1, model.N_INPUTS),)
    try:
        edge = litert_torch.convert(torch_module(weights), sample)
        with tempfile.TemporaryDirectory(prefix="wearfed-tflite-") as tmp:
            path = Path(tmp) / "model.tflite"
            edge.export(str(path))
            return path.read_bytes()
    except Exception as exc:  # the converter raises many kinds (MLIR, torch.export); name it and stop
        raise ExportError(f"litert-torch could not convert the forecaster: {exc!r}") from exc


def max_abs_diff(weights: np.ndarray, tflite: bytes, x: np.ndarray) -> float:
    """Largest |LiteRT - torch| forecast difference (mg/dL) over the windows x."""
    return float(np.max(np.abs(TFLiteForecaster(tflite).predict(x) - torch_forecast(weights, x))))


def calibrate(weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> Calibration:
    """Residual (target - forecast) mean and SD per horizon on the validation windows."""
    resid = np.asarray(y, dtype=np.float64) - model.predict(weights, x)
    mean, sd = resid.mean(axis=0), resid.std(axis=0, ddof=1) if len(resid) > 1 else np.full(2, np.nan)
    if not np.all(np.isfinite(sd)) or np.any(sd <= 0):
        raise ExportError(f"cannot calibrate on {len(resid)} windows: residual SD {sd}")
    return Calibration(tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in sd), len(resid))


def export_checked(weights: np.ndarray, x: np.ndarray, y: np.ndarray, *, tolerance: float = MAX_ABS_DIFF_MGDL,
                   tflite: bytes | None = None) -> Export:
    """Convert (or take `tflite`), check agreement on x within `tolerance` mg/dL, and calibrate on (x, y)."""
    weights = np.asarray(weights, dtype=np.float32)
    data = convert(weights) if tflite is None else tflite
    diff = max_abs_diff(weights, data, x)
    if not diff < tolerance:
        raise AgreementError(f"LiteRT and torch differ by up to {diff:.4g} mg/dL on {len(x)} validation windows "
                             f"(limit {tolerance} mg/dL): not released")
    log.info("tflite export: %d B, max |LiteRT - torch| = %.3g mg/dL on %d windows", len(data), diff, len(x))
    return Export(data, diff, calibrate(weights, x, y))
