"""DP-SGD training of the shared forecaster with Opacus: per-sample clipping, Gaussian noise, Poisson sampling."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

from federation import model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DPConfig:
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    expected_batch_size: int = 64
    lr: float = 0.05
    delta: float = 1e-5
    accountant: str = "prv"
    epsilon_cap: float = 10.0  # cumulative, per window, at `delta`

    def __post_init__(self) -> None:
        for name in ("noise_multiplier", "max_grad_norm", "lr", "epsilon_cap"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.expected_batch_size < 1:
            raise ValueError(f"expected_batch_size must be >= 1, got {self.expected_batch_size}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")


@dataclass(frozen=True)
class TrainResult:
    weights: np.ndarray
    n_samples: int
    steps: int
    sample_rate: float
    loss: float


def plan_steps(n_samples: int, *, cfg: DPConfig, epochs: int) -> tuple[float, int]:
    """(sample rate q, number of steps) for `epochs` passes with Poisson sampling at the expected batch size."""
    q = min(1.0, cfg.expected_batch_size / n_samples)
    return q, max(1, int(round(epochs / q)))


# Per-sample gradients through torch's ExpandedWeights ("ew"): measured 1.6-2x a plain epoch for this MLP against
# 2.5-3.5x for Opacus' default module hooks (`python -m bench.dp_overhead`, docs/gateway.md).
GRAD_SAMPLE_MODE = "ew"


def make_private(net, optimizer, loader, *, cfg: DPConfig, grad_sample_mode: str = GRAD_SAMPLE_MODE):  # noqa: ANN001, ANN201
    """Opacus-wrap (module, optimizer, loader): per-sample clipping, Gaussian noise, Poisson sampling."""
    from opacus import PrivacyEngine

    engine = PrivacyEngine(accountant=cfg.accountant)
    return engine.make_private(module=net, optimizer=optimizer, data_loader=loader,
                               noise_multiplier=cfg.noise_multiplier, max_grad_norm=cfg.max_grad_norm,
                               poisson_sampling=True, grad_sample_mode=grad_sample_mode)


def train_dp(weights: np.ndarray, x: np.ndarray, y: np.ndarray, *, cfg: DPConfig, epochs: int,
             seed: int) -> TrainResult:
    """Train from `weights` on windows x (n, 24) -> y (n, 2), in mg/dL; returns the new flat weights."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    if len(x) == 0:
        raise ValueError("no training windows")
    # Opacus warns that its RNG is not cryptographically secure (determinism by seed is wanted in simulation)
    # and torch that inputs need no gradient (they are data); neither is actionable. Filters are process-wide
    # because training runs in worker threads, where catch_warnings() is not safe.
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    torch.manual_seed(seed)
    net = model.to_torch(weights)
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9)
    data = TensorDataset(torch.from_numpy(model.normalise(x)), torch.from_numpy(model.normalise(y)))
    q, steps = plan_steps(len(x), cfg=cfg, epochs=epochs)
    loader = DataLoader(data, batch_size=max(1, int(round(q * len(x)))))
    loss_fn = torch.nn.MSELoss()
    net, optimizer, loader = make_private(net, optimizer, loader, cfg=cfg)
    net.train()
    _done, total_loss, batches = run_steps(net, optimizer, loader, loss_fn, steps)
    return TrainResult(weights=model.from_torch(net), n_samples=len(x), steps=steps, sample_rate=q,
                       loss=total_loss / max(batches, 1))


def run_steps(net, optimizer, loader, loss_fn, steps: int) -> tuple[int, float, int]:  # noqa: ANN001
    """Take exactly `steps` optimizer steps (empty Poisson batches included: each is one accounted step)."""
    done, total_loss, batches = 0, 0.0, 0
    while done < steps:
        for xb, yb in loader:
            if done >= steps:
                break
            optimizer.zero_grad(set_to_none=True)
            if len(xb):
                loss = loss_fn(net(xb), yb)
                loss.backward()
                total_loss += float(loss.detach())
                batches += 1
            else:  # an empty Poisson batch still takes a step: zero gradient plus the Gaussian noise
                import torch

                for p in optimizer.params:
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
            optimizer.step()
            done += 1
    return done, total_loss, batches
