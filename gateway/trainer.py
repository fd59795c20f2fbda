"""DP-SGD training of the shared forecaster, with the patient as the unit of privacy by default.

unit "patient" (user-level DP, the default): each step samples patients (Poisson, rate q = expected patients /
patients), takes up to `windows_per_patient` of each sampled patient's windows, clips each patient's gradient of its
mean loss to C as a whole (`gateway.bk_clipping.BKModule.clipped_group_sum`), adds N(0, (sigma C)^2) noise to the sum
and divides by the expected number of patients: DP-FedSGD (McMahan et al. 2018, ICLR, Algorithm 1 with one local
step), whose sensitivity to adding or removing one patient with all their windows is C. Accounted by the same
sampled-Gaussian accountant (Opacus PRV or RDP) at the patient sampling rate: epsilon per patient.

unit "window" (record-level, only when chosen and labelled so): per-sample clipping of each window (book-keeping or
Opacus) and Poisson sampling of windows; its epsilon is per training window, and one patient contributes thousands.

Both draw sampling and noise from a `federation.privacy_rng.PrivacyRNG` (`gateway.dp_noise`): the OS CSPRNG in
production, a seed only in the named simulation mode.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

from federation import model
from federation.privacy_rng import PrivacyRNG
from federation.windows import Windows
from gateway.dp_noise import gaussian_noise, torch_noise
from gateway.dp_sampling import PoissonSampler, distinct_uniform

log = logging.getLogger(__name__)

PER_SAMPLE_METHODS = ("bk", "opacus")
UNITS = ("patient", "window")
HYPO_WEIGHT_BELOW_MGDL = 80.0  # windows whose +30 min target is below this get `hypo_weight` (ours: 10 above 70)


@dataclass(frozen=True)
class DPConfig:
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    expected_batch_size: int = 64  # expected units (patients, or windows for unit "window") per step
    lr: float = 0.05
    delta: float = 1e-5
    accountant: str = "prv"
    epsilon_cap: float = 10.0  # cumulative, per `unit`, at `delta`
    unit: str = "patient"
    windows_per_patient: int = 32  # at most this many of a sampled patient's windows per step (unit "patient")
    hypo_weight: float = 1.0  # loss weight of windows heading below HYPO_WEIGHT_BELOW_MGDL (1: plain MSE)
    # How per-sample gradients are clipped (unit "window"): "bk" (gateway.bk_clipping: norms and clipped sum from
    # one forward and one backward pass, Linear-only models) or "opacus" (Opacus' per-sample gradients in
    # GRAD_SAMPLE_MODE). Both give the same clipped sum (tests/gateway/test_bk_clipping.py).
    per_sample: str = "bk"

    def __post_init__(self) -> None:
        if self.per_sample not in PER_SAMPLE_METHODS:
            raise ValueError(f"per_sample must be one of {PER_SAMPLE_METHODS}, got {self.per_sample!r}")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")
        for name in ("noise_multiplier", "max_grad_norm", "lr", "epsilon_cap", "hypo_weight"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("expected_batch_size", "windows_per_patient"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")


@dataclass(frozen=True)
class TrainResult:
    weights: np.ndarray
    n_samples: int  # units trained on: patients (unit "patient") or windows
    steps: int
    sample_rate: float
    loss: float
    unit: str = "patient"
    n_windows: int = 0


def plan_steps(n_units: int, *, cfg: DPConfig, epochs: int) -> tuple[float, int]:
    """(sample rate q, number of steps) for `epochs` passes over `n_units` (patients or windows, as cfg.unit) with
    Poisson sampling at the expected batch size."""
    if n_units < 1:
        raise ValueError(f"nothing to train on: {n_units} {cfg.unit}s")
    q = min(1.0, cfg.expected_batch_size / n_units)
    return q, max(1, int(round(epochs / q)))


def units_of(data: Windows | tuple[np.ndarray, np.ndarray], unit: str) -> int:
    """How many units of privacy `data` holds: patients with a window, or windows."""
    if unit == "patient":
        if not isinstance(data, Windows):
            raise ValueError("user-level DP needs each window's patient: pass federation.windows.Windows")
        return data.n_patients
    return len(data[1] if isinstance(data, tuple) else data.y)


def hypo_weights(y: np.ndarray, *, factor: float) -> np.ndarray:
    """Per-window loss weights: `factor` where the +30 min target is below HYPO_WEIGHT_BELOW_MGDL, else 1."""
    y = np.asarray(y, dtype=np.float64)
    return np.where(y[:, 0] < HYPO_WEIGHT_BELOW_MGDL, float(factor), 1.0).astype(np.float32)


# Per-sample gradients through torch's ExpandedWeights ("ew"): the fastest of Opacus' modes for this MLP
# (`python -m bench.dp_overhead` prints "hooks" beside it; docs/gateway.md has the figures).
GRAD_SAMPLE_MODE = "ew"


def flat_dp_optimizer_class():  # -> type[opacus.optimizers.DPOptimizer]; opacus is imported only when training
    """Opacus' DPOptimizer with its noise and scaling done once over all parameters as one flat vector."""
    import torch
    from opacus.optimizers import DPOptimizer
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    class FlatDPOptimizer(DPOptimizer):
        """Same arithmetic as DPOptimizer.clip_and_accumulate / add_noise / scale_grad (opacus 1.6,
        optimizers/optimizer.py), with noise and scaling done once on the concatenated parameters:

        - flat clipping: per-sample norm over all parameters (the norm of the per-parameter norms, as Opacus),
          factor min(1, C / (norm + 1e-6)) (Opacus' constant);
        - the clipped per-sample gradients summed (one matrix-vector product per parameter tensor);
        - Gaussian noise N(0, (noise_multiplier * C)^2) on every coordinate of the sum, drawn from the optimizer's
          `privacy_rng` (`gateway.dp_noise`: OS CSPRNG, or a seed in simulation mode) instead of torch's generator;
        - division by expected_batch_size x accumulated iterations (loss_reduction "mean").
        """

        _summed_flat = None
        _grad_flat = None
        privacy_rng: PrivacyRNG | None = None  # make_private sets it; noise refuses to come from anywhere else

        def privacy_noise(self, reference: torch.Tensor) -> torch.Tensor:
            std = self.noise_multiplier * self.max_grad_norm
            if std > 0 and self.privacy_rng is None:
                raise ValueError("DP-SGD noise needs a PrivacyRNG (make_private(..., rng=...)): torch's seeded "
                                 "generator is not used for privacy noise")
            return torch_noise(self.privacy_rng, std=std, reference=reference) if std > 0 \
                else torch.zeros_like(reference)

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
            self._grad_flat = self._summed_flat + self.privacy_noise(self._summed_flat)
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

    Same clip factor, noise (`privacy_noise` on the flat sum) and scaling as FlatDPOptimizer; only the
    source of the clipped sum changes. Attach the module with `attach(bk_module)` (make_private does).
    """
    import torch

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
            self._grad_flat = self._summed_flat + self.privacy_noise(self._summed_flat)
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


def make_private(net, optimizer, *, cfg: DPConfig, n_samples: int, rng: PrivacyRNG,  # noqa: ANN001, ANN201
                 grad_sample_mode: str = GRAD_SAMPLE_MODE, per_sample: str | None = None):
    """Wrap (module, optimizer) for Poisson batches at rate q = plan_steps(...)[0]: flat per-sample clipping at
    `max_grad_norm`, Gaussian noise of std noise_multiplier x max_grad_norm on the clipped sum, the sum divided by
    the expected batch size q x n_samples. Batches come from `PoissonSampler`, not a DataLoader.

    Noise comes from `rng` (`gateway.dp_noise`). `per_sample` (default `cfg.per_sample`): "bk" clips by
    book-keeping (`gateway.bk_clipping`; refuses models with layers other than nn.Linear and parameter-free
    per-sample modules), "opacus" through Opacus' per-sample gradients in `grad_sample_mode`.
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
        dp_optimizer.privacy_rng = rng
        return bk, dp_optimizer
    gsm = prepare_module(net, grad_sample_mode=grad_sample_mode, batch_first=True, loss_reduction="mean")
    gsm.forbid_grad_accumulation()  # one Poisson batch per step, as the accountant assumes
    dp_optimizer = flat_dp_optimizer_class()(optimizer, **kwargs)
    dp_optimizer.privacy_rng = rng
    return gsm, dp_optimizer


def train_dp(weights: np.ndarray, data: Windows | tuple[np.ndarray, np.ndarray] | np.ndarray,
             y: np.ndarray | None = None, *, cfg: DPConfig, epochs: int, rng: PrivacyRNG) -> TrainResult:
    """Train from `weights` on windows (x (n, N_INPUTS) -> y (n, 2), mg/dL) with DP-SGD at `cfg.unit`; returns the
    new flat weights. `data` is a `Windows` (any unit), or x with `y` / an (x, y) pair (unit "window" only: bare
    arrays do not say whose windows they are). Sampling and noise come from `rng`."""
    if not isinstance(rng, PrivacyRNG):
        raise TypeError(f"rng must be a federation.privacy_rng.PrivacyRNG, got {type(rng).__name__}")
    if y is not None:
        data = (np.asarray(data), np.asarray(y))
    x, y = data
    if len(x) == 0:
        raise ValueError("no training windows")
    if rng.label:
        log.warning("%s (DP-SGD sampling and noise)", rng.label)
    if cfg.unit == "patient":
        return _train_patient_dp(weights, data, cfg=cfg, epochs=epochs, rng=rng)
    return _train_window_dp(weights, x, y, cfg=cfg, epochs=epochs, rng=rng)


def _train_window_dp(weights: np.ndarray, x: np.ndarray, y: np.ndarray, *, cfg: DPConfig, epochs: int,
                     rng: PrivacyRNG) -> TrainResult:
    import torch

    # Opacus warns that inputs need no gradient (they are data) when hooks fire; not actionable. The filter is
    # process-wide because training runs in worker threads, where catch_warnings() is not safe.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    net = model.to_torch(weights)
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9)
    xs, ys = torch.from_numpy(model.normalise_inputs(x)), torch.from_numpy(model.normalise(y))
    q, steps = plan_steps(len(x), cfg=cfg, epochs=epochs)
    net, optimizer = make_private(net, optimizer, cfg=cfg, n_samples=len(x), rng=rng)
    sampler = PoissonSampler(len(x), sample_rate=q, steps=steps, rng=rng)
    net.train()
    ws = torch.from_numpy(hypo_weights(y, factor=cfg.hypo_weight))

    def loss_fn(out: torch.Tensor, target: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return (((out - target) ** 2).mean(dim=1) * ws[rows]).mean()

    _done, total_loss, batches = run_steps(net, optimizer, xs, ys, sampler, loss_fn)
    return TrainResult(weights=model.from_torch(net), n_samples=len(x), steps=steps, sample_rate=q,
                       loss=total_loss / max(batches, 1), unit="window", n_windows=len(x))


def _train_patient_dp(weights: np.ndarray, data: Windows, *, cfg: DPConfig, epochs: int,
                      rng: PrivacyRNG) -> TrainResult:
    """User-level DP-SGD (module doc): Poisson-sampled patients, each patient's mean-loss gradient clipped to C."""
    import torch

    from gateway.bk_clipping import BKModule

    if not isinstance(data, Windows):
        raise ValueError("user-level DP needs each window's patient: pass federation.windows.Windows")
    present = np.unique(data.patient)
    rows_of = [np.flatnonzero(data.patient == p) for p in present]
    n_patients, m = len(present), cfg.windows_per_patient
    q, steps = plan_steps(n_patients, cfg=cfg, epochs=epochs)
    net = model.to_torch(weights)
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9)
    bk = BKModule(net)
    params = bk.trainable_parameters()
    sizes = [p.numel() for p in params]
    xs, ys = torch.from_numpy(model.normalise_inputs(data.x)), torch.from_numpy(model.normalise(data.y))
    ws = hypo_weights(data.y, factor=cfg.hypo_weight)
    std = cfg.noise_multiplier * cfg.max_grad_norm
    expected = q * n_patients
    total_loss, batches = 0.0, 0
    net.train()
    for batch in PoissonSampler(n_patients, sample_rate=q, steps=steps, rng=rng):
        optimizer.zero_grad(set_to_none=True)
        if len(batch):
            rows, weight = _patient_rows(batch, rows_of, m, rng, ws)
            rows_t, weight_t = torch.from_numpy(rows), torch.from_numpy(weight)
            per_row = ((bk(xs[rows_t]) - ys[rows_t]) ** 2).mean(dim=1)
            (per_row * weight_t).sum().backward()
            summed = torch.cat(bk.clipped_group_sum(group_size=m, max_grad_norm=cfg.max_grad_norm))
            total_loss += float((per_row.detach() * weight_t).sum()) / len(batch)
            batches += 1
        else:
            bk.clear()
            summed = torch.zeros(sum(sizes))
        noisy = summed + torch.from_numpy(gaussian_noise(rng, std=std, size=len(summed))).to(summed.dtype)
        for p, part in zip(params, (noisy / expected).split(sizes), strict=True):
            p.grad = part.view_as(p).clone()
        optimizer.step()
    return TrainResult(weights=model.from_torch(net), n_samples=n_patients, steps=steps, sample_rate=q,
                       loss=total_loss / max(batches, 1), unit="patient", n_windows=len(data.x))


def _patient_rows(batch: np.ndarray, rows_of: list[np.ndarray], m: int, rng: PrivacyRNG, ws: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the sampled patients, m slots each: up to m of the patient's windows (distinct, at random), the rest
    padding (row 0, weight 0); weights average the patient's hypo-weighted losses over its windows in the step."""
    rows = np.zeros(len(batch) * m, dtype=np.int64)
    weight = np.zeros(len(batch) * m, dtype=np.float32)
    for k, p in enumerate(batch):
        own = rows_of[int(p)]
        pick = own[distinct_uniform(rng, len(own), min(m, len(own)))]
        rows[k * m:k * m + len(pick)] = pick
        w = ws[pick]
        weight[k * m:k * m + len(pick)] = w / len(pick)
    return rows, weight


def run_steps(net, optimizer, x, y, sampler: PoissonSampler, loss_fn) -> tuple[int, float, int]:  # noqa: ANN001
    """One optimizer step per Poisson batch of `sampler` over tensors x, y (empty batches included: each is one
    accounted step, zero gradient plus the Gaussian noise). `loss_fn(out, target)` or, when it takes three
    arguments, `loss_fn(out, target, rows)`. Returns (steps, summed loss, non-empty batches)."""
    import torch

    done, total_loss, batches = 0, 0.0, 0
    for idx in sampler:
        optimizer.zero_grad(set_to_none=True)
        if len(idx):
            rows = torch.from_numpy(idx)
            out = net(x[rows])
            loss = loss_fn(out, y[rows], rows) if _takes_rows(loss_fn) else loss_fn(out, y[rows])
            loss.backward()
            total_loss += float(loss.detach())
            batches += 1
        else:
            record_empty_batch(optimizer)
        optimizer.step()
        done += 1
    return done, total_loss, batches


def _takes_rows(loss_fn) -> bool:  # noqa: ANN001
    import inspect

    try:
        return len(inspect.signature(loss_fn).parameters) == 3
    except (TypeError, ValueError):  # builtins and torch modules: (out, target)
        return False


def record_empty_batch(optimizer) -> None:  # noqa: ANN001
    """Tell a DP optimizer from `make_private` that this step's Poisson batch is empty (zero clipped sum)."""
    import torch

    if hasattr(optimizer, "record_empty_batch"):
        optimizer.record_empty_batch()
        return
    for p in optimizer.params:
        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
