"""The glucose forecaster every node trains: a small MLP from 2 h of 5-min CGM plus insulin, carb and time-of-day
features (`federation.features`) to glucose at +30 and +60 min.

Inputs (N_INPUTS per window): 24 glucose values in mg/dL, oldest first, then the N_FEATURES features in their raw
units; `normalise_inputs` standardises both (glucose around 150 +- 50 mg/dL, features by their center and scale).
The MLP predicts the change from the last reading (a residual over the persistence baseline).

Weights travel as one flat float32 vector in a fixed layer order, so the cloud can average them with numpy
and a device can run them without torch. `to_torch` builds the same network for training (imports torch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from federation.features import FEATURE_CENTER, FEATURE_SCALE, N_FEATURES

HISTORY_STEPS = 24  # 2 h on a 5-min grid
HORIZON_STEPS = (6, 12)  # +30 min, +60 min
GRID_SECONDS = 300
N_INPUTS = HISTORY_STEPS + N_FEATURES
LAST_GLUCOSE = HISTORY_STEPS - 1  # column of the last reading: the residual's base
# Inputs and outputs are standardised around typical CGM values.
GLUCOSE_CENTER = 150.0
GLUCOSE_SCALE = 50.0
INPUT_CENTER = np.concatenate([np.full(HISTORY_STEPS, GLUCOSE_CENTER), FEATURE_CENTER]).astype(np.float32)
INPUT_SCALE = np.concatenate([np.full(HISTORY_STEPS, GLUCOSE_SCALE), FEATURE_SCALE]).astype(np.float32)
HIDDEN = (44, 40)
ARCHITECTURE = f"mlp-{N_INPUTS}-{HIDDEN[0]}-{HIDDEN[1]}-2+last/iob-cob-ctx24h"


@dataclass(frozen=True)
class LayerShape:
    name: str
    fan_in: int
    fan_out: int


LAYERS = (
    LayerShape("fc1", N_INPUTS, HIDDEN[0]),
    LayerShape("fc2", HIDDEN[0], HIDDEN[1]),
    LayerShape("out", HIDDEN[1], len(HORIZON_STEPS)),
)
N_PARAMS = sum(s.fan_in * s.fan_out + s.fan_out for s in LAYERS)


def init_weights(*, seed: int) -> np.ndarray:
    """Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) initialisation, as torch.nn.Linear does; deterministic by seed."""
    rng = np.random.default_rng(seed)
    parts = []
    for s in LAYERS:
        bound = 1.0 / np.sqrt(s.fan_in)
        parts.append(rng.uniform(-bound, bound, size=s.fan_in * s.fan_out))
        parts.append(rng.uniform(-bound, bound, size=s.fan_out))
    return np.concatenate(parts).astype(np.float32)


def unflatten(weights: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split a flat vector into (W[fan_out, fan_in], b[fan_out]) per layer; checks the length."""
    if weights.shape != (N_PARAMS,):
        raise ValueError(f"expected {N_PARAMS} weights for {ARCHITECTURE}, got shape {weights.shape}")
    out, i = [], 0
    for s in LAYERS:
        w = weights[i : i + s.fan_in * s.fan_out].reshape(s.fan_out, s.fan_in)
        i += s.fan_in * s.fan_out
        b = weights[i : i + s.fan_out]
        i += s.fan_out
        out.append((w, b))
    return out


def normalise(glucose: np.ndarray) -> np.ndarray:
    """Glucose values (targets) in the network's units."""
    return (np.asarray(glucose, dtype=np.float32) - GLUCOSE_CENTER) / GLUCOSE_SCALE


def normalise_inputs(x: np.ndarray) -> np.ndarray:
    """Windows (n, N_INPUTS) in the network's units; checks the width."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != N_INPUTS:
        raise ValueError(f"expected inputs of shape (n, {N_INPUTS}) for {ARCHITECTURE}, got {x.shape}")
    return (x - INPUT_CENTER) / INPUT_SCALE


def denormalise(z: np.ndarray) -> np.ndarray:
    return np.asarray(z, dtype=np.float64) * GLUCOSE_SCALE + GLUCOSE_CENTER


def predict(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Numpy forward pass: windows (n, N_INPUTS) -> (n, 2) mg/dL at +30 and +60 min."""
    h = normalise_inputs(x)
    layers = unflatten(np.asarray(weights, dtype=np.float32))
    last = h[:, LAST_GLUCOSE:LAST_GLUCOSE + 1]
    for k, (w, b) in enumerate(layers):
        h = h @ w.T + b
        if k < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return denormalise(h + last)


def to_torch(weights: np.ndarray):  # -> torch.nn.Module; torch is imported only here
    """Build the torch module with these weights (for training)."""
    import torch
    from torch import nn

    class Forecaster(nn.Module):
        """MLP on the history, added to the last reading (a residual over persistence)."""

        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            for k, s in enumerate(LAYERS):
                layers.append(nn.Linear(s.fan_in, s.fan_out))
                if k < len(LAYERS) - 1:
                    layers.append(nn.ReLU())
            self.mlp = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mlp(x) + x[:, LAST_GLUCOSE:LAST_GLUCOSE + 1]

    module = Forecaster()
    linear = [m for m in module.mlp if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for lin, (w, b) in zip(linear, unflatten(np.asarray(weights, dtype=np.float32)), strict=True):
            lin.weight.copy_(torch.tensor(w))
            lin.bias.copy_(torch.tensor(b))
    return module


def from_torch(module) -> np.ndarray:
    """Flatten a module built by `to_torch` (possibly wrapped by Opacus) back to the wire vector."""
    from torch import nn

    inner = getattr(module, "_module", module)
    parts = []
    for lin in (m for m in inner.mlp if isinstance(m, nn.Linear)):
        parts.append(lin.weight.detach().cpu().numpy().reshape(-1))
        parts.append(lin.bias.detach().cpu().numpy().reshape(-1))
    return np.concatenate(parts).astype(np.float32)
