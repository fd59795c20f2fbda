"""Forecast baselines: persistence, linear extrapolation, per-patient AR with insulin and carbs, and a non-private
model trained on pooled clean data."""

from __future__ import annotations

import numpy as np

from federation import model
from federation.features import FEATURE_NAMES

LINEAR_FIT_STEPS = 3  # fit the trend over the last 15 min (3 readings on the 5-min grid)
AR_LAGS = 12  # the per-patient AR looks at the last hour (12 readings)
# The exogenous inputs of the per-patient ARX: the events' expected effects and what is on board.
AR_EXOGENOUS = ("iob_u", "cob_g", "insulin_next30_u", "carbs_next30_g", "insulin_effect60_mgdl",
                "carb_effect60_mgdl")
AR_RIDGE = 1.0  # ridge penalty of the per-patient fit (ours: keeps short fits stable)


def linear_extrapolation(x: np.ndarray) -> np.ndarray:
    """Least-squares line through the last readings, extended to +30 and +60 min; (n, >= 24) -> (n, 2)."""
    h = np.asarray(x, dtype=np.float64)[:, model.HISTORY_STEPS - LINEAR_FIT_STEPS:model.HISTORY_STEPS]
    t = np.arange(LINEAR_FIT_STEPS) - (LINEAR_FIT_STEPS - 1)  # ..., -1, 0 (the last reading)
    slope = ((h - h.mean(axis=1, keepdims=True)) * (t - t.mean())).sum(axis=1) / ((t - t.mean()) ** 2).sum()
    intercept = h.mean(axis=1) - slope * t.mean()
    return np.stack([intercept + slope * k for k in model.HORIZON_STEPS], axis=1)


def _ar_design(x: np.ndarray, *, exogenous: bool) -> np.ndarray:
    last = x[:, model.LAST_GLUCOSE:model.LAST_GLUCOSE + 1]
    cols = [np.ones((len(x), 1)), last, x[:, model.HISTORY_STEPS - AR_LAGS:model.HISTORY_STEPS] - last]
    if exogenous:
        cols.append(x[:, [model.HISTORY_STEPS + FEATURE_NAMES.index(n) for n in AR_EXOGENOUS]])
    return np.hstack(cols)


def per_patient_ar(fit_x: np.ndarray, fit_y: np.ndarray, fit_patient: np.ndarray, x: np.ndarray,
                   patient: np.ndarray, *, exogenous: bool = True) -> np.ndarray:
    """Per-patient ARX (AR with insulin and carbs when `exogenous`): for each patient, a ridge regression of the
    change at +30/+60 min on the last reading, the last hour relative to it and the event features, fitted on that
    patient's earlier windows (`fit_*`) and applied to its later ones. Patients without fit windows get persistence.
    Direct multi-horizon AR with exogenous inputs, as in the ARX baselines of the glucose-forecasting literature
    (e.g. Sparacino et al. 2007, IEEE TBME 54(5); with carbohydrate and insulin inputs, Finan et al. 2009)."""
    out = np.repeat(np.asarray(x, dtype=np.float64)[:, model.LAST_GLUCOSE:model.LAST_GLUCOSE + 1],
                    len(model.HORIZON_STEPS), axis=1)
    for p in np.unique(patient):
        fit = np.flatnonzero(fit_patient == p)
        rows = np.flatnonzero(patient == p)
        if len(fit) < 10:
            continue
        a = _ar_design(fit_x[fit], exogenous=exogenous)
        b = fit_y[fit] - fit_x[fit, model.LAST_GLUCOSE:model.LAST_GLUCOSE + 1]
        penalty = AR_RIDGE * np.eye(a.shape[1])
        penalty[0, 0] = 0.0  # the intercept is not shrunk
        coef = np.linalg.solve(a.T @ a + penalty, a.T @ b)
        out[rows] += _ar_design(x[rows], exogenous=exogenous) @ coef
    return out


def train_plain(weights: np.ndarray, x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int, lr: float = 0.05,
                batch_size: int = 64, optimizer: str = "sgd", hypo_weight: float = 1.0) -> np.ndarray:
    """Ordinary mini-batch training (no clipping, no noise): the non-private reference and the upper bound.

    `optimizer` "sgd" (momentum 0.9, what the nodes run) or "adam"; `hypo_weight` multiplies the loss of windows
    whose +30 min target is below 80 mg/dL (`gateway.trainer.hypo_weights`)."""
    import torch

    from gateway.trainer import hypo_weights

    torch.manual_seed(seed)
    net = model.to_torch(weights)
    opt = torch.optim.Adam(net.parameters(), lr=lr) if optimizer == "adam" else \
        torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    xs, ys = torch.from_numpy(model.normalise_inputs(x)), torch.from_numpy(model.normalise(y))
    ws = torch.from_numpy(hypo_weights(y, factor=hypo_weight))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xs), generator=gen)
        for i in range(0, len(xs), batch_size):
            rows = perm[i:i + batch_size]
            opt.zero_grad(set_to_none=True)
            (((net(xs[rows]) - ys[rows]) ** 2).mean(dim=1) * ws[rows]).mean().backward()
            opt.step()
    return model.from_torch(net)
