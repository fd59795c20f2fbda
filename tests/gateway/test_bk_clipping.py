"""Book-keeping (BK) clipping against Opacus' per-sample clipping on the same batches, its refusals and misuse guards.

The Opacus side is the gateway's own per_sample="opacus" path (per-sample gradients in "ew" mode) and Opacus' stock
DPOptimizer; the independent reference is plain autograd, one record at a time.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.grad_sample import prepare_module
from opacus.optimizers import DPOptimizer
from torch import nn

from federation import model
from federation.errors import ConfigError
from gateway.bk_clipping import BKModule
from gateway.trainer import DPConfig, make_private, record_empty_batch, train_dp
from tests.gateway.inputs import sim, with_features

C = 0.7
RTOL = 1e-5  # float32: the brief's bar for "equal"


def windows(n: int, seed: int = 0, *, outlier: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    base = rng.uniform(60, 300, size=(n, 1))
    x = with_features(base + rng.normal(0, 8, size=(n, model.HISTORY_STEPS)), rng)
    y = base + rng.normal(0, 40, size=(n, 2))
    if outlier:
        y[0] = 1e6
    return torch.from_numpy(model.normalise_inputs(x)), torch.from_numpy(model.normalise(y))


def per_record_norms(weights: np.ndarray, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    net = model.to_torch(weights)
    out = []
    for i in range(len(x)):
        net.zero_grad()
        nn.functional.mse_loss(net(x[i : i + 1]), y[i : i + 1]).backward()
        out.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]).norm())
    return torch.stack(out)


def clipped_sum(weights: np.ndarray, x: torch.Tensor, y: torch.Tensor, *, per_sample: str,
                clip: float = C) -> torch.Tensor:
    """The gateway's clipped, summed gradient (before noise) on batch (x, y); an empty x is an empty batch."""
    net = model.to_torch(weights)
    cfg = DPConfig(max_grad_norm=clip, per_sample=per_sample)
    wrapped, opt = make_private(net, torch.optim.SGD(net.parameters(), lr=0.0), cfg=cfg, n_samples=1000, rng=sim())
    opt.zero_grad(set_to_none=True)
    if len(x):
        nn.functional.mse_loss(wrapped(x), y).backward()
    else:
        record_empty_batch(opt)
    opt.clip_and_accumulate()
    return opt._summed_flat.clone()


def stock_opacus_sum(weights: np.ndarray, x: torch.Tensor, y: torch.Tensor, *, clip: float) -> torch.Tensor:
    """Opacus' own DPOptimizer (per-parameter, no noise) in "ew" mode: p.grad x expected batch size."""
    net = model.to_torch(weights)
    gsm = prepare_module(net, grad_sample_mode="ew", batch_first=True, loss_reduction="mean")
    opt = DPOptimizer(torch.optim.SGD(net.parameters(), lr=0.0), noise_multiplier=0.0, max_grad_norm=clip,
                      expected_batch_size=64, loss_reduction="mean")
    opt.zero_grad(set_to_none=True)
    nn.functional.mse_loss(gsm(x), y).backward()
    opt.step()
    return torch.cat([p.grad.reshape(-1) for p in net.parameters()]) * 64


def assert_equal_sums(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape == (model.N_PARAMS,)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=RTOL * float(want.abs().max()))


CASES = {  # name: (records, outlier, clipping bound)
    "mixed": (64, False, C),
    "all_clipped": (64, True, 1e-3),
    "none_clipped": (64, False, 1e3),
    "one_record": (1, False, 1e3),
    "one_clipped_record": (1, True, C),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bk_clipped_sum_equals_opacus_per_sample_clipping(case: str) -> None:
    n, outlier, clip = CASES[case]
    w = model.init_weights(seed=11)
    x, y = windows(n, seed=3, outlier=outlier)
    clipped = per_record_norms(w, x, y) > clip
    expect = {"mixed": None, "all_clipped": True, "none_clipped": False, "one_record": False}.get(case, True)
    if expect is None:
        assert 0 < int(clipped.sum()) < n  # the batch really mixes clipped and unclipped records
    else:
        assert bool(clipped.all()) if expect else not bool(clipped.any())
    bk = clipped_sum(w, x, y, per_sample="bk", clip=clip)
    assert_equal_sums(bk, clipped_sum(w, x, y, per_sample="opacus", clip=clip))
    assert_equal_sums(bk, stock_opacus_sum(w, x, y, clip=clip))


def test_bk_clipped_sum_of_an_empty_batch_is_zero_like_opacus() -> None:
    w = model.init_weights(seed=12)
    x, y = windows(0)
    bk = clipped_sum(w, x, y, per_sample="bk")
    assert torch.equal(bk, torch.zeros(model.N_PARAMS))
    assert torch.equal(bk, clipped_sum(w, x, y, per_sample="opacus"))


def test_bk_matches_opacus_on_many_random_batches() -> None:
    """Random weights, batch sizes and clipping bounds, from a bound that clips nearly all to one that clips none."""
    rng = np.random.default_rng(0)
    for k in range(12):
        w = model.init_weights(seed=100 + k)
        x, y = windows(int(rng.integers(1, 130)), seed=k)
        clip = float(10 ** rng.uniform(-2, 1.5))
        assert_equal_sums(clipped_sum(w, x, y, per_sample="bk", clip=clip),
                          clipped_sum(w, x, y, per_sample="opacus", clip=clip))


def noisy_step(per_sample: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    net = model.to_torch(model.init_weights(seed=13))
    cfg = DPConfig(noise_multiplier=1.3, max_grad_norm=C, per_sample=per_sample)
    wrapped, opt = make_private(net, torch.optim.SGD(net.parameters(), lr=0.0), cfg=cfg, n_samples=500, rng=sim())
    torch.manual_seed(7)
    opt.zero_grad(set_to_none=True)
    if len(x):
        nn.functional.mse_loss(wrapped(x), y).backward()
    else:
        record_empty_batch(opt)
    opt.step()
    return torch.cat([p.grad.reshape(-1) for p in net.parameters()])


@pytest.mark.parametrize("n", [0, 1, 40])
def test_noise_and_scaling_are_the_opacus_paths(n: int) -> None:
    """Same seed, same batch: BK and the Opacus path draw the same noise and divide by the same q*N."""
    x, y = windows(n, seed=4)
    bk, opacus = noisy_step("bk", x, y), noisy_step("opacus", x, y)
    torch.testing.assert_close(bk, opacus, rtol=RTOL, atol=1e-6)
    assert float(bk.std()) > 0.5 * 1.3 * C / 64  # the noise is there


def test_train_dp_gives_the_same_model_with_bk_and_opacus() -> None:
    rng = np.random.default_rng(1)
    x = with_features(rng.uniform(80, 250, size=(300, model.HISTORY_STEPS)), rng)
    y = x[:, 22:24] + rng.normal(0, 30, size=(300, 2))
    w0 = model.init_weights(seed=0)
    bk, op = (train_dp(w0, x, y, cfg=DPConfig(unit="window", expected_batch_size=20, per_sample=m), epochs=2,
                       rng=sim(3))
              for m in ("bk", "opacus"))
    assert (bk.steps, bk.sample_rate) == (op.steps, op.sample_rate)
    np.testing.assert_allclose(bk.weights, op.weights, rtol=1e-4, atol=1e-5)
    assert not np.allclose(bk.weights, w0)


def test_default_is_bk_and_one_outlier_moves_the_sum_by_at_most_c() -> None:
    assert DPConfig().per_sample == "bk"
    w = model.init_weights(seed=6)
    x, y = windows(40, seed=4, outlier=True)
    diff = clipped_sum(w, x, y, per_sample="bk") - clipped_sum(w, x[1:], y[1:], per_sample="bk")
    assert float(diff.norm()) == pytest.approx(C, rel=1e-3)


def test_backward_leaves_no_unclipped_gradient_behind() -> None:
    """Autograd never forms the non-private batch gradient: p.grad is unset until the DP step writes it."""
    net = model.to_torch(model.init_weights(seed=0))
    wrapped, opt = make_private(net, torch.optim.SGD(net.parameters(), lr=0.1), cfg=DPConfig(), n_samples=100,
                                rng=sim())
    x, y = windows(10)
    opt.zero_grad(set_to_none=True)
    nn.functional.mse_loss(wrapped(x), y).backward()
    assert all(p.grad is None for p in net.parameters())
    opt.step()
    assert all(p.grad is not None for p in net.parameters())


def test_reusing_or_accumulating_batches_is_refused() -> None:
    net = model.to_torch(model.init_weights(seed=0))
    wrapped, opt = make_private(net, torch.optim.SGD(net.parameters(), lr=0.1), cfg=DPConfig(), n_samples=100,
                                rng=sim())
    x, y = windows(10)
    with pytest.raises(ValueError, match="zero_grad"):  # a step before any batch
        opt.step()
    opt.zero_grad(set_to_none=True)
    nn.functional.mse_loss(wrapped(x), y).backward()
    opt.step()
    with pytest.raises(ValueError, match="zero_grad"):  # the same batch a second time
        opt.step()
    opt.zero_grad(set_to_none=True)
    nn.functional.mse_loss(wrapped(x), y).backward()
    with pytest.raises(ValueError, match="zero_grad"):  # a second batch accumulated into the same step
        nn.functional.mse_loss(wrapped(x), y).backward()
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():  # evaluation records nothing and does not disturb the next step
        wrapped(x)
    nn.functional.mse_loss(wrapped(x), y).backward()
    opt.step()


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.fc(x)))


class Sequence(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(len(x), 3, 4)).sum(dim=1)


class Folded(nn.Module):
    """Folds each sample into two rows: every Linear sees 2n rows, so row-wise clipping would bound half-samples."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(2 * len(x), 6)).reshape(len(x), 4)


class RootParam(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.ones(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.scale


class MyLinear(nn.Linear):
    pass


def tied() -> nn.Module:
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight
    return nn.Sequential(a, b)


@pytest.mark.parametrize("build", [
    lambda: nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2)),
    lambda: nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, affine=False), nn.Linear(4, 2)),
    lambda: nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(4, 2)),
    lambda: nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2)),
    lambda: nn.Sequential(MyLinear(4, 2)),
    RootParam,
    tied,
    lambda: nn.Sequential(nn.ReLU()),
], ids=["layernorm", "batchnorm", "conv", "embedding", "linear-subclass", "root-parameter", "tied-weights",
        "no-linear"])
def test_unsupported_models_are_refused_up_front(build) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match="BK clipping|Linear|opacus"):
        BKModule(build())


@pytest.mark.parametrize("build, x", [(Shared, torch.randn(5, 4)), (Sequence, torch.randn(5, 12))],
                         ids=["weight-sharing", "sequence-input"])
def test_models_that_break_one_row_per_sample_are_refused_at_the_forward(build, x: torch.Tensor) -> None:  # noqa: ANN001
    wrapped = BKModule(build())
    with pytest.raises(ConfigError, match="per_sample='opacus'"):
        wrapped(x)


def test_a_model_folding_samples_into_several_rows_is_refused_at_clipping() -> None:
    wrapped = BKModule(Folded())
    nn.functional.mse_loss(wrapped(torch.randn(5, 12)), torch.randn(5, 4)).backward()
    with pytest.raises(ConfigError, match="one input row per sample"):
        wrapped.clipped_sum(max_grad_norm=1.0)


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="per_sample"):
        DPConfig(per_sample="ghost")
    net = model.to_torch(model.init_weights(seed=0))
    with pytest.raises(ValueError, match="per_sample"):
        make_private(net, torch.optim.SGD(net.parameters(), lr=0.1), cfg=DPConfig(), n_samples=10, per_sample="x",
                     rng=sim())
    reordered = list(net.parameters())[::-1]
    with pytest.raises(ValueError, match="module order"):
        make_private(net, torch.optim.SGD(reordered, lr=0.1), cfg=DPConfig(), n_samples=10, rng=sim())
    fresh = model.to_torch(model.init_weights(seed=0))
    make_private(fresh, torch.optim.SGD(fresh.parameters(), lr=0.1), cfg=DPConfig(), n_samples=10, rng=sim())
    with pytest.raises(ValueError, match="already wrapped"):
        make_private(fresh, torch.optim.SGD(fresh.parameters(), lr=0.1), cfg=DPConfig(), n_samples=10, rng=sim())


def test_frozen_layers_are_left_out_of_the_norm() -> None:
    """A frozen Linear contributes nothing to the per-sample norm; the trainable ones match a per-record reference."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    net[0].weight.requires_grad_(False)
    x, y = torch.randn(9, 6), torch.randn(9, 3) * 5
    want = torch.zeros(5 + 15 + 3)
    for i in range(9):
        net.zero_grad()
        nn.functional.mse_loss(net(x[i : i + 1]), y[i : i + 1]).backward()
        g = torch.cat([p.grad.reshape(-1) for p in net.parameters() if p.requires_grad])
        want += min(1.0, 0.5 / (float(g.norm()) + 1e-6)) * g
    wrapped = BKModule(net)
    assert [p.shape for p in wrapped.trainable_parameters()] == [(5,), (3, 5), (3,)]
    nn.functional.mse_loss(wrapped(x), y).backward()
    got = torch.cat(wrapped.clipped_sum(max_grad_norm=0.5))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
