"""The forecaster as a TFLite model run by the LiteRT interpreter (``ai-edge-litert``, else ``tflite-runtime``).

The exported graph takes one window of model inputs (float32, shape (1, N_INPUTS): 24 readings in mg/dL, then the
`federation.features` in their raw units) and returns the forecasts at +30 and +60 min in mg/dL (shape (1, 2));
the standardisation of `federation.model` is inside the graph.
Both the cloud (agreement check at export) and the device (inference) run it through `TFLiteForecaster`.
"""

from __future__ import annotations

import numpy as np

from federation.errors import WearfedError
from federation.model import HORIZON_STEPS, N_INPUTS

INPUT_SHAPE = (1, N_INPUTS)
OUTPUT_SHAPE = (1, len(HORIZON_STEPS))


class LiteRTError(WearfedError):
    """No LiteRT runtime is installed, or a TFLite file cannot be loaded as the forecaster."""


def interpreter_class() -> tuple[type, str]:
    """(Interpreter class, runtime name): ai-edge-litert first, then tflite-runtime (what older Pi images ship)."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"
    except ImportError as exc:
        raise LiteRTError("no LiteRT runtime: pip install 'wearfed[inference]' (ai-edge-litert) "
                          "or tflite-runtime") from exc


class TFLiteForecaster:
    """One interpreter holding one model; `predict_one` runs a single window (not thread-safe: one per thread)."""

    def __init__(self, tflite: bytes) -> None:
        cls, self.runtime = interpreter_class()
        try:
            self._it = cls(model_content=bytes(tflite), num_threads=1)
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise LiteRTError(f"LiteRT cannot load the model: {exc}") from exc
        ins, outs = self._it.get_input_details(), self._it.get_output_details()
        if len(ins) != 1 or len(outs) != 1:
            raise LiteRTError(f"model has {len(ins)} inputs and {len(outs)} outputs, expected 1 and 1")
        shapes = (tuple(int(v) for v in ins[0]["shape"]), tuple(int(v) for v in outs[0]["shape"]))
        if shapes != (INPUT_SHAPE, OUTPUT_SHAPE) or ins[0]["dtype"] != np.float32:
            raise LiteRTError(f"model maps {shapes[0]} {ins[0]['dtype']} -> {shapes[1]}, expected float32 "
                              f"{INPUT_SHAPE} -> {OUTPUT_SHAPE}")
        self._in, self._out = ins[0]["index"], outs[0]["index"]

    def predict_one(self, window: np.ndarray) -> np.ndarray:
        """Forecast (2,) mg/dL at +30 and +60 min from one window of model inputs (N_INPUTS,)."""
        x = np.asarray(window, dtype=np.float32).reshape(INPUT_SHAPE)
        self._it.set_tensor(self._in, x)
        self._it.invoke()
        return self._it.get_tensor(self._out)[0].astype(np.float64)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Forecasts (n, 2) for n windows, one invocation each (the graph has a fixed batch of 1)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != N_INPUTS:
            raise ValueError(f"expected windows of shape (n, {N_INPUTS}), got {x.shape}")
        return np.stack([self.predict_one(row) for row in x]) if len(x) else np.empty((0, OUTPUT_SHAPE[1]))
