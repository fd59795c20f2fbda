"""DP-SGD mechanics of the gateway trainer: per-sample clipping bound, noise scale, Opacus equivalence, misuse.

Reference per-sample gradients come from plain torch autograd, one record at a time, not from Opacus.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from opacus.grad_sample import prepare_module
from opacus.optimizers import DPOptimizer

from federation import model
from federation.privacy_rng import PrivacyRNG
from gateway.dp_sampling import PoissonSampler
from gateway.trainer import DPConfig, flat_dp_optimizer_class, make_private, plan_steps, run_steps, train_dp
from tests.gateway.inputs import sim, with_features

C = 0.7  # clipping bound used throughout


def windows(n: int, seed: int = 0, *, outlier: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    base = rng.uniform(60, 300, size=(n, 1))
    x = with_features(base + rng.normal(0, 8, size=(n, model.HISTORY_STEPS)), rng)
    y = base + rng.normal(0, 40, size=(n, 2))
    if outlier:
        y[0] = 1e6  # a record whose gradient is enormous
    return torch.from_numpy(model.normalise_inputs(x)), torch.from_numpy(model.normalise(y))


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def reference_clipped_sum(weights: np.ndarray, x: torch.Tensor, y: torch.Tensor, clip: float) -> torch.Tensor:
    """Sum over records of min(1, C / (||g_i|| + 1e-6)) g_i, each g_i from its own backward pass."""
    net = model.to_torch(weights)
    total = torch.zeros(model.N_PARAMS)
    for i in range(len(x)):
        net.zero_grad()
        torch.nn.functional.mse_loss(net(x[i : i + 1]), y[i : i + 1]).backward()
        g = flat([p.grad for p in net.parameters()])
        total += min(1.0, clip / (float(g.norm()) + 1e-6)) * g
    return total


def dp_grad(weights: np.ndarray, x: torch.Tensor, y: torch.Tensor, *, noise: float, batch: int,
            mode: str = "ew", stock: bool = False) -> torch.Tensor:
    """The flat p.grad after one DP step on batch (x, y); Opacus' own DPOptimizer when `stock`."""
    net = model.to_torch(weights)
    sgd = torch.optim.SGD(net.parameters(), lr=0.0)
    gsm = prepare_module(net, grad_sample_mode=mode, batch_first=True, loss_reduction="mean")
    cls = DPOptimizer if stock else flat_dp_optimizer_class()
    opt = cls(sgd, noise_multiplier=noise, max_grad_norm=C, expected_batch_size=batch, loss_reduction="mean")
    if not stock:
        opt.privacy_rng = PrivacyRNG.secure()
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.mse_loss(gsm(x), y).backward()
    opt.step()
    return flat([p.grad for p in net.parameters()])


def test_clipped_sum_matches_per_record_autograd_reference() -> None:
    w = model.init_weights(seed=3)
    x, y = windows(48, seed=1)
    ref = reference_clipped_sum(w, x, y, C)
    got = dp_grad(w, x, y, noise=0.0, batch=64) * 64  # the optimizer divides by the expected batch size
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("mode", ["hooks", "functorch"])
def test_every_opacus_mode_feeds_the_same_clipped_sum(mode: str) -> None:
    w = model.init_weights(seed=4)
    x, y = windows(30, seed=2)
    torch.testing.assert_close(dp_grad(w, x, y, noise=0.0, batch=64, mode=mode),
                               dp_grad(w, x, y, noise=0.0, batch=64), rtol=1e-4, atol=1e-6)


def test_flat_optimizer_equals_opacus_dpoptimizer_without_noise() -> None:
    w = model.init_weights(seed=5)
    x, y = windows(64, seed=3, outlier=True)
    torch.testing.assert_close(dp_grad(w, x, y, noise=0.0, batch=64),
                               dp_grad(w, x, y, noise=0.0, batch=64, stock=True), rtol=1e-5, atol=1e-7)


def test_one_record_moves_the_clipped_sum_by_at_most_the_clipping_bound() -> None:
    """Sensitivity: neighbouring batches (one record added, here an extreme outlier) differ by <= C in the sum."""
    w = model.init_weights(seed=6)
    x, y = windows(40, seed=4, outlier=True)
    with_outlier = dp_grad(w, x, y, noise=0.0, batch=64) * 64
    without = dp_grad(w, x[1:], y[1:], noise=0.0, batch=64) * 64
    diff = float((with_outlier - without).norm())
    assert diff == pytest.approx(C, rel=1e-3)  # the outlier is clipped to exactly C, not more
    for i in range(5):  # every record's own contribution respects the bound
        alone = dp_grad(w, x[i : i + 1], y[i : i + 1], noise=0.0, batch=64) * 64
        assert float(alone.norm()) <= C * (1 + 1e-5)


def noise_only_grads(*, sigma: float, n_samples: int, steps: int, empty: bool, per_sample: str) -> np.ndarray:
    """p.grad after `steps` DP steps whose clipped sum is exactly zero: empty batches, or records whose every
    per-sample gradient is zero (targets equal to the model's own forecasts)."""
    cfg = DPConfig(noise_multiplier=sigma, max_grad_norm=C, lr=0.05, per_sample=per_sample)
    torch.manual_seed(0)
    net = model.to_torch(model.init_weights(seed=7))
    x, _y = windows(n_samples, seed=5)
    with torch.no_grad():
        y = net(x)
    sgd = torch.optim.SGD(net.parameters(), lr=0.0)
    gsm, opt = make_private(net, sgd, cfg=cfg, n_samples=n_samples, rng=sim())
    out = []
    rows = np.empty(0, dtype=np.int64) if empty else np.arange(min(n_samples, 16), dtype=np.int64)
    for _ in range(steps):
        done, _loss, _batches = run_steps(gsm, opt, x, y, [rows], torch.nn.MSELoss())
        assert done == 1
        out.append(flat([p.grad for p in net.parameters()]).numpy().copy())
    return np.stack(out)


@pytest.mark.parametrize("per_sample", ["bk", "opacus"])
@pytest.mark.parametrize("empty", [True, False])
def test_noise_std_is_sigma_c_over_expected_batch(empty: bool, per_sample: str) -> None:
    sigma, n = 1.3, 5000
    expected_batch = min(DPConfig().expected_batch_size, n)  # q * N, as Opacus divides a "mean" loss
    g = noise_only_grads(sigma=sigma, n_samples=n, steps=20, empty=empty, per_sample=per_sample)
    target = sigma * C / expected_batch
    m = g.size
    assert abs(g.std() - target) < 5 * target / math.sqrt(2 * m)
    assert abs(g.mean()) < 5 * target / math.sqrt(m)
    corr = np.corrcoef(g[:-1].ravel(), g[1:].ravel())[0, 1]  # fresh noise every step
    assert abs(corr) < 5 / math.sqrt(m)


def test_noise_scale_matches_opacus_dpoptimizer() -> None:
    """The same zero-gradient batch through Opacus' stock DPOptimizer and the flat one: same noise std."""
    torch.manual_seed(1)
    w = model.init_weights(seed=8)
    x, _ = windows(16, seed=6)
    with torch.no_grad():
        y = model.to_torch(w)(x)
    flat_g = torch.stack([dp_grad(w, x, y, noise=2.0, batch=64) for _ in range(10)])
    stock_g = torch.stack([dp_grad(w, x, y, noise=2.0, batch=64, stock=True) for _ in range(10)])
    target = 2.0 * C / 64
    for g in (flat_g, stock_g):
        assert abs(float(g.std()) - target) < 5 * target / math.sqrt(2 * g.numel())


@pytest.mark.parametrize("per_sample", ["bk", "opacus"])
def test_expected_batch_size_is_q_times_n(per_sample: str) -> None:
    cfg = DPConfig(per_sample=per_sample)
    for n in (28_100, 2_530, 64, 40):
        q, _steps = plan_steps(n, cfg=cfg, epochs=1)
        net = model.to_torch(model.init_weights(seed=0))
        _gsm, opt = make_private(net, torch.optim.SGD(net.parameters(), lr=0.1), cfg=cfg, n_samples=n, rng=sim())
        assert opt.expected_batch_size == pytest.approx(q * n)


def test_train_dp_samples_at_the_accounted_rate_for_the_accounted_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.trainer as trainer

    seen: list[tuple[int, float, int, int]] = []

    class Recording(PoissonSampler):
        def __iter__(self):  # noqa: ANN204
            count = 0
            for idx in super().__iter__():
                count += 1
                yield idx
            seen.append((self.n_samples, self.sample_rate, self.steps, count))

    monkeypatch.setattr(trainer, "PoissonSampler", Recording)
    x = with_features(np.random.default_rng(0).uniform(80, 250, size=(300, model.HISTORY_STEPS)))
    res = train_dp(model.init_weights(seed=0), x, x[:, 22:24], cfg=DPConfig(unit="window", expected_batch_size=20),
                   epochs=2, rng=sim(1))
    assert seen == [(300, res.sample_rate, res.steps, res.steps)]
    assert (res.sample_rate, res.steps) == plan_steps(300, cfg=DPConfig(expected_batch_size=20), epochs=2)


@pytest.mark.parametrize("per_sample", ["bk", "opacus"])
def test_a_second_step_on_the_same_per_sample_gradients_is_refused(per_sample: str) -> None:
    """Reusing one batch's per-sample gradients for two noisy steps would spend privacy unaccounted."""
    net = model.to_torch(model.init_weights(seed=0))
    gsm, opt = make_private(net, torch.optim.SGD(net.parameters(), lr=0.1), cfg=DPConfig(per_sample=per_sample),
                            n_samples=100, rng=sim())
    x, y = windows(10)
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.mse_loss(gsm(x), y).backward()
    opt.step()
    with pytest.raises(ValueError, match="zero_grad"):
        opt.step()


def test_make_private_refuses_misuse() -> None:
    net = model.to_torch(model.init_weights(seed=0))
    other = model.to_torch(model.init_weights(seed=1))
    with pytest.raises(ValueError, match="not the module's"):
        make_private(net, torch.optim.SGD(other.parameters(), lr=0.1), cfg=DPConfig(), n_samples=10, rng=sim())
    with pytest.raises(ValueError, match="grad_sample_mode"):
        make_private(net, torch.optim.SGD(net.parameters(), lr=0.1), cfg=DPConfig(), n_samples=10, rng=sim(),
                     grad_sample_mode="ghost")
    with pytest.raises(ValueError, match="n_samples"):
        make_private(net, torch.optim.SGD(net.parameters(), lr=0.1), cfg=DPConfig(), n_samples=0, rng=sim())
