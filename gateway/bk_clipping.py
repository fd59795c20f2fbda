"""Per-sample gradient clipping by book-keeping (BK) for Linear layers: one forward, one backward, no per-sample grads.

For a Linear layer z = W a + b applied to one input row a_i per sample, sample i's gradient is
dL_i/dW = g_i a_i^T and dL_i/db = g_i, with g_i = dL_i/dz_i. So ||dL_i/dW||^2 = ||g_i||^2 ||a_i||^2 (the ghost-norm
identity: Goodfellow 2015, "Efficient Per-Example Gradient Computations", arXiv:1510.01799; Li, Tramer, Liang and
Hashimoto 2022, "Large Language Models Can Be Strong Differentially Private Learners", ICLR), and the clipped
sum is sum_i c_i g_i a_i^T = G^T diag(c) A. Book-keeping (Bu, Wang, Zha and Karypis 2023, "Differentially Private
Optimization on Large Model at Small Cost", ICML) keeps A and G from the single forward and backward pass
and forms both the norms and the clipped sum from them, never building the n x d per-sample gradients.

`BKModule` wraps a model and records, per Linear layer, the input rows A and output gradients G; `clipped_sum`
turns them into sum_i c_i grad_i with Opacus' clip factor c_i = min(1, C / (||grad_i|| + 1e-6)) (opacus 1.6,
optimizers/optimizer.py, `clip_and_accumulate`), norms taken over all trainable parameters (flat clipping).
Supported: models whose parameters all sit in nn.Linear layers, each called at most once per forward on a 2-D
(batch, features) input with one row per sample of the batch, between parameter-free per-sample modules.
Anything else is refused with `ConfigError`, because the norm identity above would silently be wrong (weight
sharing, sequence inputs, normalisation layers).
The caller's own forward must treat samples independently and the loss must be a mean over samples, as with
Opacus' per-sample modes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from federation.errors import ConfigError

# Opacus 1.6 clip factor: max_grad_norm / (per_sample_norm + 1e-6), clamped at 1 (optimizers/optimizer.py).
OPACUS_CLIP_EPS = 1e-6

# Parameter-free modules that act on each sample on its own; anything else in the model is refused.
PER_SAMPLE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Sequential, nn.Identity, nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Dropout,
)


@dataclass
class _Layer:
    linear: nn.Linear
    weight: bool  # trainable weight
    bias: bool  # trainable bias
    calls: int = 0
    a: torch.Tensor | None = None  # (n, fan_in) input rows
    g: torch.Tensor | None = None  # (n, fan_out) gradient of the batch loss at the output


class BKModule(nn.Module):
    """`module` with book-keeping on its Linear layers; call it as the module. Refuses unsupported models.

    Each trainable Linear's forward is replaced (on the instance, no module hooks) by one that records its input
    rows and a tensor hook for its output gradient, and computes the output from detached parameters: back-prop
    then carries only output gradients, and autograd never forms the (unclipped) weight gradients, which
    `clipped_sum` replaces by the clipped sum G^T diag(c) A (Bu et al. 2023). The parameters' .grad is
    therefore left untouched by backward: only a BK-aware optimizer (gateway.trainer.make_private) sets it.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        if getattr(module, "_bk_wrapped", False):
            raise ValueError("this module is already wrapped by a BKModule")
        self._module = module
        self._batch = -1  # samples in the last batch
        self._layers = [la for la in _supported_layers(module) if la.weight or la.bias]  # frozen ones: left alone
        if not self._layers:
            raise ConfigError("no trainable nn.Linear layer")
        module._bk_wrapped = True
        for layer in self._layers:
            layer.linear.forward = self._recording_forward(layer)

    def forward(self, x: torch.Tensor, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        """The wrapped module on batch `x` (samples along dim 0)."""
        for layer in self._layers:
            layer.calls = 0
        self._batch = x.shape[0]
        return self._module(x, *args, **kwargs)

    @staticmethod
    def _recording_forward(layer: _Layer):  # noqa: ANN205
        lin = layer.linear

        def on_grad(grad: torch.Tensor) -> None:
            if layer.g is not None:
                raise ValueError("gradients of two backward passes in one step: one Poisson batch per step "
                                 "(call optimizer.zero_grad() before the next batch)")
            layer.g = grad

        def forward(x: torch.Tensor) -> torch.Tensor:
            if not torch.is_grad_enabled():  # evaluation: nothing to record
                return F.linear(x, lin.weight, lin.bias)
            if layer.calls:
                raise ConfigError("a Linear layer ran twice in one forward pass (weight sharing): BK clipping would "
                                  "compute wrong per-sample norms; use per_sample='opacus'")
            if x.dim() != 2:
                raise ConfigError(f"BK clipping needs 2-D (batch, features) Linear inputs, got shape "
                                  f"{tuple(x.shape)}; use per_sample='opacus'")
            if layer.g is not None:
                raise ValueError("a second forward pass before the optimizer step: one Poisson batch per step "
                                 "(call optimizer.zero_grad() before the next batch)")
            layer.calls += 1
            layer.a = x.detach()
            out = F.linear(x, lin.weight.detach(), None if lin.bias is None else lin.bias.detach())
            if not x.requires_grad:
                out.requires_grad_()  # first layer on the data: back-prop starts at its output
            out.register_hook(on_grad)
            return out

        return forward

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters whose clipped sums `clipped_sum` returns, in its order (module order)."""
        out = []
        for la in self._layers:
            out += [la.linear.weight] if la.weight else []
            out += [la.linear.bias] if la.bias else []
        return out

    def record_empty_batch(self) -> None:
        """An empty Poisson batch: zero rows in every layer, so the clipped sum is zero."""
        self._batch = 0
        for layer in self._layers:
            w = layer.linear.weight
            layer.a = w.new_zeros((0, layer.linear.in_features))
            layer.g = w.new_zeros((0, layer.linear.out_features))

    def clear(self) -> None:
        """Forget the recorded batch (optimizer.zero_grad)."""
        for layer in self._layers:
            layer.a = layer.g = None

    def clipped_sum(self, *, max_grad_norm: float, loss_reduction: str = "mean") -> list[torch.Tensor]:
        """sum_i c_i grad_i for the recorded batch, one flat tensor per `trainable_parameters()`; then forgets the
        batch, so a second call without a new forward and backward raises.

        c_i = min(1, C / (||grad_i|| + 1e-6)), ||grad_i||^2 summed over all trainable parameters (Opacus' flat
        clipping). `loss_reduction="mean"`: the loss was a mean over the n samples, so sample i's own gradient is
        n g_i a_i^T (as Opacus' grad samplers scale it)."""
        layers = self._layers
        if any(la.a is None or la.g is None for la in layers):
            raise ValueError("no per-sample activations and gradients recorded since the last step: call "
                             "optimizer.zero_grad(), then forward and backward on one batch")
        n = self._batch
        if any(la.a.shape[0] != n or la.g.shape[0] != n for la in layers):
            raise ConfigError(f"a Linear layer saw other than one input row per sample ({n} samples, rows "
                              f"{[la.a.shape[0] for la in layers]}): per-sample norms would be wrong; use "
                              "per_sample='opacus'")
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be mean or sum, got {loss_reduction!r}")
        scale = float(n) if loss_reduction == "mean" else 1.0
        norm2 = None  # sum over layers of ||g_i||^2 ||a_i||^2 (weight) + ||g_i||^2 (bias), before the loss scale
        for la in layers:
            g2 = torch.linalg.vecdot(la.g, la.g)
            if la.weight:
                a2 = torch.linalg.vecdot(la.a, la.a)
                part = torch.addcmul(g2, g2, a2) if la.bias else g2 * a2
            else:
                part = g2
            norm2 = part if norm2 is None else norm2.add_(part)
        norms = norm2.sqrt_().mul_(scale)  # ||grad_i|| of sample i's own gradient
        factor = (max_grad_norm / norms.add_(OPACUS_CLIP_EPS)).clamp_(max=1.0)  # Opacus' c_i
        weight = factor.mul_(scale)  # c_i n: folds the loss scale into the sum
        out = []
        for la in layers:
            gt = la.g.T
            if la.weight:
                out.append(torch.mm(gt * weight, la.a).view(-1))  # G^T diag(c n) A
            if la.bias:
                out.append(torch.mv(gt, weight))  # sum_i c_i n g_i
        self.clear()
        return out


    def clipped_group_sum(self, *, group_size: int, max_grad_norm: float) -> list[torch.Tensor]:
        """Per-group clipping (user-level DP: a group is one patient's windows): rows k*m .. k*m + m - 1 of the
        recorded batch (m = `group_size`) form group k; each group's gradient, the gradient of the recorded loss
        summed over its rows, is clipped to norm C as a whole, and the clipped gradients are summed. One flat tensor
        per `trainable_parameters()`; then forgets the batch.

        The loss must be a sum over rows (weight a row by 1/k for a mean over a patient's k windows; padding rows of
        weight 0 contribute nothing). Group k's weight gradient is G_k^T A_k (Linear layers; the same identity as
        per-sample clipping with a block of rows per sample), formed by one batched matrix product, its norm over
        all trainable parameters (flat clipping), its factor min(1, C / (||grad_k|| + 1e-6)) as Opacus'. This is the
        per-user clipping of DP-FedSGD (McMahan, Ramage, Talwar and Zhang 2018, "Learning Differentially Private
        Recurrent Language Models", ICLR, Algorithm 1 with one local step)."""
        layers = self._layers
        if any(la.a is None or la.g is None for la in layers):
            raise ValueError("no activations and gradients recorded since the last step: call optimizer.zero_grad(), "
                             "then forward and backward on one batch")
        n, m = self._batch, int(group_size)
        if m < 1 or n % m:
            raise ValueError(f"{n} recorded rows do not split into groups of {m}")
        if any(la.a.shape[0] != n or la.g.shape[0] != n for la in layers):
            raise ConfigError("a Linear layer saw other than one input row per batch row: group gradients would be "
                              "wrong")
        k = n // m
        grads: list[torch.Tensor] = []
        for la in layers:
            g = la.g.reshape(k, m, -1)
            if la.weight:
                grads.append(torch.bmm(g.transpose(1, 2), la.a.reshape(k, m, -1)).reshape(k, -1))
            if la.bias:
                grads.append(g.sum(dim=1))
        norms = torch.sqrt(sum((gr * gr).sum(dim=1) for gr in grads)) if k else torch.zeros(0)
        factor = (max_grad_norm / (norms + OPACUS_CLIP_EPS)).clamp(max=1.0)
        self.clear()
        return [factor @ gr for gr in grads]



def _supported_layers(module: nn.Module) -> list[_Layer]:
    if any(True for _ in module.parameters(recurse=False)):
        raise ConfigError(f"{type(module).__name__} holds parameters outside nn.Linear layers: BK clipping "
                          "supports only Linear layers; use per_sample='opacus'")
    layers, seen = [], set()
    for name, sub in module.named_modules():
        if sub is module:
            continue
        if isinstance(sub, nn.Linear):
            if type(sub) is not nn.Linear:
                raise ConfigError(f"{name}: {type(sub).__name__} subclasses nn.Linear; BK clipping supports only "
                                  "nn.Linear itself; use per_sample='opacus'")
            params = [p for p in (sub.weight, sub.bias) if p is not None]
            if any(id(p) in seen for p in params):
                raise ConfigError(f"{name}: parameters shared with another layer; use per_sample='opacus'")
            seen.update(id(p) for p in params)
            layers.append(_Layer(sub, weight=sub.weight.requires_grad,
                                 bias=sub.bias is not None and sub.bias.requires_grad))
        elif type(sub) not in PER_SAMPLE_MODULES or any(True for _ in sub.parameters(recurse=False)) \
                or any(True for _ in sub.buffers(recurse=False)):
            raise ConfigError(f"{name}: {type(sub).__name__} is not supported by BK clipping (only nn.Linear and "
                              "parameter-free per-sample modules); use per_sample='opacus'")
    return layers
