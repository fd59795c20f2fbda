"""DP-SGD training of the shared forecaster with Opacus: per-sample clipping, Gaussian noise, Poisson sampling."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

from federation import model
from gateway.dp_sampling import PoissonSampler

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


# Per-sample gradients through torch's ExpandedWeights ("ew"): the fastest of Opacus' modes for this MLP
# (`python -m bench.dp_overhead` prints "hooks" beside it; docs/gateway.md has the figures).
GRAD_SAMPLE_MODE = "ew"


def flat_dp_optimizer_class():  # -> type[opacus.optimizers.DPOptimizer]; opacus is imported only when training
    """Opacus' DPOptimizer with its noise and scaling done once over all parameters as one flat vector."""
    import torch
    from opacus.optimizers import DPOptimizer
    from opacus.optimizers.optimizer import _check_processed_flag, _generate_noise, _mark_as_processed

    class FlatDPOptimizer(DPOptimizer):
        """Same arithmetic as DPOptimizer.clip_and_accumulate / add_noise / scale_grad (opacus 1.6,
        optimizers/optimizer.py), with noise and scaling done once on the concatenated parameters:

        - flat clipping: per-sample norm over all parameters (the norm of the per-parameter norms, as Opacus),
          factor min(1, C / (norm + 1e-6)) (Opacus' constant);
        - the clipped per-sample gradients summed (one matrix-vector product per parameter tensor);
        - Gaussian noise N(0, (noise_multiplier * C)^2) on every coordinate of the sum (Opacus' `_generate_noise`,
          secure mode included);
        - division by expected_batch_size x accumulated iterations (loss_reduction "mean").
        """

        _summed_flat = None
        _grad_flat = None

        def clip_and_accumulate(self) -> None:
            params = self.params
            for p in params:
                _check_processed_flag(p.grad_sample)
            samples = self.grad_samples
            n = len(samples[0])
            rows = [g.reshape(n, p.numel()).to(p.dtype) for g, p in zip(samples, params, strict=True)]
            norms = torch.stack([torch.linalg.vector_norm(r, dim=1) for r in rows], dim=1).norm(2, dim=1)
            factor = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
            summed = torch.cat([factor @ r for r in rows])  # an empty batch sums to zeros
            self._summed_flat = summed if self._summed_flat is None else self._summed_flat + summed
            for p, part in zip(params, self._summed_flat.split([p.numel() for p in params]), strict=True):
                p.summed_grad = part.view_as(p)
                _mark_as_processed(p.grad_sample)

        def add_noise(self) -> None:
            params = self.params
            for p in params:
                _check_processed_flag(p.summed_grad)
            noise = _generate_noise(std=self.noise_multiplier * self.max_grad_norm, reference=self._summed_flat,
                                    generator=self.generator, secure_mode=self.secure_mode)
            self._grad_flat = self._summed_flat + noise
            for p, part in zip(params, self._grad_flat.split([p.numel() for p in params]), strict=True):
                p.grad = part.view_as(p)
                _mark_as_processed(p.summed_grad)

        def scale_grad(self) -> None:
            if self.loss_reduction == "mean":  # in place: every p.grad is a view of this vector
                self._grad_flat /= self.expected_batch_size * self.accumulated_iterations

        def zero_grad(self, set_to_none: bool = False) -> None:
            if not self._is_last_step_skipped:
                self._summed_flat = None
            self._grad_flat = None
            super().zero_grad(set_to_none)

    return FlatDPOptimizer


def make_private(net, optimizer, *, cfg: DPConfig, n_samples: int,  # noqa: ANN001, ANN201
                 grad_sample_mode: str = GRAD_SAMPLE_MODE):
    """Opacus-wrap (module, optimizer) for Poisson batches at rate q = plan_steps(...)[0]: per-sample gradients,
    flat clipping at `max_grad_norm`, Gaussian noise of std noise_multiplier x max_grad_norm on the clipped sum,
    the sum divided by the expected batch size q x n_samples. Batches come from `PoissonSampler`, not a DataLoader.
    """
    from opacus.grad_sample import prepare_module
    from opacus.validators import ModuleValidator

    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if grad_sample_mode not in ("ew", "hooks", "functorch"):  # ghost clipping needs Opacus' criterion wrapper
        raise ValueError(f"grad_sample_mode must be ew, hooks or functorch, got {grad_sample_mode!r}")
    own = set(net.parameters())
    if any(p not in own for group in optimizer.param_groups for p in group["params"]):
        raise ValueError("the optimizer holds parameters that are not the module's")
    ModuleValidator.validate(net, strict=True)  # what PrivacyEngine.make_private checks first
    gsm = prepare_module(net, grad_sample_mode=grad_sample_mode, batch_first=True, loss_reduction="mean")
    gsm.forbid_grad_accumulation()  # one Poisson batch per step, as the accountant assumes
    dp_optimizer = flat_dp_optimizer_class()(
        optimizer, noise_multiplier=cfg.noise_multiplier, max_grad_norm=cfg.max_grad_norm,
        expected_batch_size=min(cfg.expected_batch_size, n_samples), loss_reduction="mean")
    return gsm, dp_optimizer


def train_dp(weights: np.ndarray, x: np.ndarray, y: np.ndarray, *, cfg: DPConfig, epochs: int,
             seed: int) -> TrainResult:
    """Train from `weights` on windows x (n, 24) -> y (n, 2), in mg/dL; returns the new flat weights."""
    import torch

    if len(x) == 0:
        raise ValueError("no training windows")
    # Opacus warns that inputs need no gradient (they are data) when hooks fire; not actionable. The filter is
    # process-wide because training runs in worker threads, where catch_warnings() is not safe.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    torch.manual_seed(seed)  # the Gaussian noise (Opacus' non-secure RNG: determinism by seed in simulation)
    net = model.to_torch(weights)
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9)
    xs, ys = torch.from_numpy(model.normalise(x)), torch.from_numpy(model.normalise(y))
    q, steps = plan_steps(len(x), cfg=cfg, epochs=epochs)
    net, optimizer = make_private(net, optimizer, cfg=cfg, n_samples=len(x))
    sampler = PoissonSampler(len(x), sample_rate=q, steps=steps, seed=seed)
    net.train()
    _done, total_loss, batches = run_steps(net, optimizer, xs, ys, sampler, torch.nn.MSELoss())
    return TrainResult(weights=model.from_torch(net), n_samples=len(x), steps=steps, sample_rate=q,
                       loss=total_loss / max(batches, 1))


def run_steps(net, optimizer, x, y, sampler: PoissonSampler, loss_fn) -> tuple[int, float, int]:  # noqa: ANN001
    """One optimizer step per Poisson batch of `sampler` over tensors x, y (empty batches included: each is one
    accounted step, zero gradient plus the Gaussian noise). Returns (steps, summed loss, non-empty batches)."""
    import torch

    done, total_loss, batches = 0, 0.0, 0
    for idx in sampler:
        optimizer.zero_grad(set_to_none=True)
        if len(idx):
            rows = torch.from_numpy(idx)
            loss = loss_fn(net(x[rows]), y[rows])
            loss.backward()
            total_loss += float(loss.detach())
            batches += 1
        else:
            for p in optimizer.params:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
        optimizer.step()
        done += 1
    return done, total_loss, batches
