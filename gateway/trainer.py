"""DP-SGD training of the shared forecaster: per-sample clipping (book-keeping or Opacus), Opacus' Gaussian noise and
accountant, exact Poisson sampling."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

from federation import model
from gateway.dp_sampling import PoissonSampler

log = logging.getLogger(__name__)

PER_SAMPLE_METHODS = ("bk", "opacus")


@dataclass(frozen=True)
class DPConfig:
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    expected_batch_size: int = 64
    lr: float = 0.05
    delta: float = 1e-5
    accountant: str = "prv"
    epsilon_cap: float = 10.0  # cumulative, per window, at `delta`
    # How per-sample gradients are clipped: "bk" (gateway.bk_clipping: norms and clipped sum from one forward and
    # one backward pass, Linear-only models) or "opacus" (Opacus' per-sample gradients in GRAD_SAMPLE_MODE). Both
    # give the same clipped sum (tests/gateway/test_bk_clipping.py); noise, scaling and accounting are shared.
    per_sample: str = "bk"

    def __post_init__(self) -> None:
        if self.per_sample not in PER_SAMPLE_METHODS:
            raise ValueError(f"per_sample must be one of {PER_SAMPLE_METHODS}, got {self.per_sample!r}")
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


def bk_dp_optimizer_class():  # -> type[FlatDPOptimizer]
    """FlatDPOptimizer whose clipped sum comes from a `gateway.bk_clipping.BKModule` instead of p.grad_sample.

    Same clip factor, noise (Opacus' `_generate_noise` on the flat sum) and scaling as FlatDPOptimizer; only the
    source of the clipped sum changes. Attach the module with `attach(bk_module)` (make_private does).
    """
    import torch
    from opacus.optimizers.optimizer import _generate_noise

    class BKDPOptimizer(flat_dp_optimizer_class()):
        bk_module = None
        _bk_params: list = []
        _bk_sizes: list = []

        def attach(self, bk_module) -> None:  # noqa: ANN001
            """Take the clipped sums from `bk_module`; it must hold exactly this optimizer's parameters, in order."""
            theirs, ours = bk_module.trainable_parameters(), self.params
            if len(theirs) != len(ours) or any(p is not q for p, q in zip(theirs, ours, strict=False)):
                raise ValueError("the optimizer's trainable parameters must be the model's trainable Linear "
                                 "parameters, in module order (build the optimizer from net.parameters())")
            self.bk_module, self._bk_params, self._bk_sizes = bk_module, ours, [p.numel() for p in ours]

        @property
        def accumulated_iterations(self) -> int:
            return 1  # BKModule refuses a second forward or backward before the step

        def record_empty_batch(self) -> None:
            self.bk_module.record_empty_batch()

        def clip_and_accumulate(self) -> None:
            parts = self.bk_module.clipped_sum(max_grad_norm=self.max_grad_norm, loss_reduction=self.loss_reduction)
            summed = torch.cat(parts)
            self._summed_flat = summed if self._summed_flat is None else self._summed_flat + summed

        def add_noise(self) -> None:
            # FlatDPOptimizer.add_noise without Opacus' per-tensor "processed" flags: clipped_sum consumed the
            # recorded batch, so a second step on it raises there instead
            noise = _generate_noise(std=self.noise_multiplier * self.max_grad_norm, reference=self._summed_flat,
                                    generator=self.generator, secure_mode=self.secure_mode)
            self._grad_flat = self._summed_flat + noise
            for p, part in zip(self._bk_params, self._grad_flat.split(self._bk_sizes), strict=True):
                p.grad = part.view_as(p)

        def pre_step(self, closure=None) -> bool:  # noqa: ANN001
            # DPOptimizer.pre_step without its look-up of p.grad_sample (BK has none)
            self.clip_and_accumulate()
            if self._check_skip_next_step():
                self._is_last_step_skipped = True
                return False
            self.add_noise()
            self.scale_grad()
            if self.step_hook:
                self.step_hook(self)
            self._is_last_step_skipped = False
            return True

        def zero_grad(self, set_to_none: bool = False) -> None:
            self.bk_module.clear()
            if not self._is_last_step_skipped:
                self._summed_flat = None
            self._grad_flat = None
            self.original_optimizer.zero_grad(set_to_none)

    return BKDPOptimizer


def make_private(net, optimizer, *, cfg: DPConfig, n_samples: int,  # noqa: ANN001, ANN201
                 grad_sample_mode: str = GRAD_SAMPLE_MODE, per_sample: str | None = None):
    """Wrap (module, optimizer) for Poisson batches at rate q = plan_steps(...)[0]: flat per-sample clipping at
    `max_grad_norm`, Gaussian noise of std noise_multiplier x max_grad_norm on the clipped sum, the sum divided by
    the expected batch size q x n_samples. Batches come from `PoissonSampler`, not a DataLoader.

    `per_sample` (default `cfg.per_sample`): "bk" clips by book-keeping (`gateway.bk_clipping`; refuses models
    with layers other than nn.Linear and parameter-free per-sample modules), "opacus" through Opacus' per-sample
    gradients in `grad_sample_mode`.
    """
    from opacus.grad_sample import prepare_module
    from opacus.validators import ModuleValidator

    per_sample = cfg.per_sample if per_sample is None else per_sample
    if per_sample not in PER_SAMPLE_METHODS:
        raise ValueError(f"per_sample must be one of {PER_SAMPLE_METHODS}, got {per_sample!r}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if grad_sample_mode not in ("ew", "hooks", "functorch"):  # ghost clipping needs Opacus' criterion wrapper
        raise ValueError(f"grad_sample_mode must be ew, hooks or functorch, got {grad_sample_mode!r}")
    own = set(net.parameters())
    if any(p not in own for group in optimizer.param_groups for p in group["params"]):
        raise ValueError("the optimizer holds parameters that are not the module's")
    ModuleValidator.validate(net, strict=True)  # what PrivacyEngine.make_private checks first
    kwargs = {"noise_multiplier": cfg.noise_multiplier, "max_grad_norm": cfg.max_grad_norm,
              "expected_batch_size": min(cfg.expected_batch_size, n_samples), "loss_reduction": "mean"}
    if per_sample == "bk":
        from gateway.bk_clipping import BKModule

        dp_optimizer = bk_dp_optimizer_class()(optimizer, **kwargs)
        bk = BKModule(net)
        dp_optimizer.attach(bk)
        return bk, dp_optimizer
    gsm = prepare_module(net, grad_sample_mode=grad_sample_mode, batch_first=True, loss_reduction="mean")
    gsm.forbid_grad_accumulation()  # one Poisson batch per step, as the accountant assumes
    return gsm, flat_dp_optimizer_class()(optimizer, **kwargs)


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
            record_empty_batch(optimizer)
        optimizer.step()
        done += 1
    return done, total_loss, batches


def record_empty_batch(optimizer) -> None:  # noqa: ANN001
    """Tell a DP optimizer from `make_private` that this step's Poisson batch is empty (zero clipped sum)."""
    import torch

    if hasattr(optimizer, "record_empty_batch"):
        optimizer.record_empty_batch()
        return
    for p in optimizer.params:
        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
