"""Forecast baselines: persistence, linear extrapolation, and a non-private model trained on pooled clean data."""

from __future__ import annotations

import numpy as np

from federation import model

LINEAR_FIT_STEPS = 3  # fit the trend over the last 15 min (3 readings on the 5-min grid)


def linear_extrapolation(history: np.ndarray) -> np.ndarray:
    """Least-squares line through the last readings, extended to +30 and +60 min; (n, 24) -> (n, 2)."""
    h = np.asarray(history, dtype=np.float64)[:, -LINEAR_FIT_STEPS:]
    t = np.arange(LINEAR_FIT_STEPS) - (LINEAR_FIT_STEPS - 1)  # ..., -1, 0 (the last reading)
    slope = ((h - h.mean(axis=1, keepdims=True)) * (t - t.mean())).sum(axis=1) / ((t - t.mean()) ** 2).sum()
    intercept = h.mean(axis=1) - slope * t.mean()
    return np.stack([intercept + slope * k for k in model.HORIZON_STEPS], axis=1)


def train_plain(weights: np.ndarray, x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int, lr: float = 0.05,
                batch_size: int = 64) -> np.ndarray:
    """Ordinary mini-batch SGD (no clipping, no noise): the non-private reference and the upper bound."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    net = model.to_torch(weights)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    data = TensorDataset(torch.from_numpy(model.normalise(x)), torch.from_numpy(model.normalise(y)))
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    loss_fn = torch.nn.MSELoss()
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad(set_to_none=True)
            loss_fn(net(xb), yb).backward()
            opt.step()
    return model.from_torch(net)
