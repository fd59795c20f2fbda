"""User-level DP-SGD: each patient's whole contribution clipped to C, patients Poisson-sampled, noise sigma C / (q P).

The reference per-patient gradients come from plain autograd, one patient at a time.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from federation import model
from federation.privacy_rng import PrivacyRNG
from federation.windows import Windows
from gateway.bk_clipping import BKModule
from gateway.trainer import DPConfig, plan_steps, train_dp
from tests.gateway.inputs import sim, with_features

C = 0.5


def patients(sizes: list[int], seed: int = 0, *, outlier: int | None = None) -> Windows:
    rng = np.random.default_rng(seed)
    xs, ys, ps = [], [], []
    for k, n in enumerate(sizes):
        base = rng.uniform(70, 250)
        x = with_features(base + rng.normal(0, 8, size=(n, model.HISTORY_STEPS)), rng)
        y = base + rng.normal(0, 30, size=(n, 2))
        if k == outlier:
            y[:] = 900.0  # a patient whose gradient is enormous
        xs.append(x)
        ys.append(y)
        ps.append(np.full(n, k))
    names = tuple(f"p{k}" for k in range(len(sizes)))
    return Windows(np.concatenate(xs), np.concatenate(ys), np.concatenate(ps), names, np.arange(sum(sizes)) * 300)


def reference_clipped_sum(weights: np.ndarray, w: Windows, clip: float) -> torch.Tensor:
    """Sum over patients of min(1, C / (||g_p|| + 1e-6)) g_p, g_p the gradient of the patient's mean loss."""
    net = model.to_torch(weights)
    total = torch.zeros(model.N_PARAMS)
    x, y = torch.from_numpy(model.normalise_inputs(w.x)), torch.from_numpy(model.normalise(w.y))
    for p in np.unique(w.patient):
        rows = torch.from_numpy(np.flatnonzero(w.patient == p))
        net.zero_grad()
        ((net(x[rows]) - y[rows]) ** 2).mean(dim=1).mean().backward()
        g = torch.cat([q.grad.reshape(-1) for q in net.parameters()])
        total += min(1.0, clip / (float(g.norm()) + 1e-6)) * g
    return total


def group_sum(weights: np.ndarray, w: Windows, clip: float, m: int) -> torch.Tensor:
    """BKModule.clipped_group_sum with each patient's rows padded to m slots (weight 1/k, padding 0)."""
    net = model.to_torch(weights)
    bk = BKModule(net)
    x, y = torch.from_numpy(model.normalise_inputs(w.x)), torch.from_numpy(model.normalise(w.y))
    rows, weight = [], []
    for p in np.unique(w.patient):
        own = np.flatnonzero(w.patient == p)
        assert len(own) <= m
        rows += list(own) + [0] * (m - len(own))
        weight += [1.0 / len(own)] * len(own) + [0.0] * (m - len(own))
    r, wt = torch.tensor(rows), torch.tensor(weight, dtype=torch.float32)
    (((bk(x[r]) - y[r]) ** 2).mean(dim=1) * wt).sum().backward()
    return torch.cat(bk.clipped_group_sum(group_size=m, max_grad_norm=clip))


def test_group_clipping_equals_per_patient_autograd() -> None:
    w = model.init_weights(seed=2)
    data = patients([3, 7, 1, 12, 5], outlier=1)
    torch.testing.assert_close(group_sum(w, data, C, m=12), reference_clipped_sum(w, data, C), rtol=1e-4,
                               atol=1e-5)


def test_one_patient_with_all_their_windows_moves_the_sum_by_at_most_c() -> None:
    """Sensitivity of user-level DP: add or remove one patient (here an extreme one, 9 windows) -> change <= C."""
    w = model.init_weights(seed=3)
    sizes = [9, 4, 6, 8]
    data = patients(sizes, seed=1, outlier=0)
    with_p = group_sum(w, data, C, m=9)
    without = group_sum(w, data.take(np.flatnonzero(data.patient != 0)), C, m=9)
    assert float((with_p - without).norm()) == pytest.approx(C, rel=1e-3)  # clipped to exactly C, not 9 C


def test_noise_std_is_sigma_c_over_the_expected_patients() -> None:
    """One step with zero gradients (targets = the model's forecasts): the update is lr x noise / (q P)."""
    sigma, lr, n_pat = 1.7, 0.01, 40
    w0 = model.init_weights(seed=4)
    data = patients([5] * n_pat, seed=2)
    y0 = model.predict(w0, data.x)
    data = Windows(data.x, y0, data.patient, data.patients, data.t)
    cfg = DPConfig(noise_multiplier=sigma, max_grad_norm=C, expected_batch_size=n_pat, lr=lr, unit="patient")
    assert plan_steps(n_pat, cfg=cfg, epochs=1) == (1.0, 1)
    steps = np.stack([(train_dp(w0, data, cfg=cfg, epochs=1, rng=sim(s)).weights - w0) / lr for s in range(4)])
    target = sigma * C / n_pat
    assert abs(steps.std() - target) < 6 * target / math.sqrt(2 * steps.size)
    assert abs(steps.mean()) < 6 * target / math.sqrt(steps.size)


def test_patients_are_sampled_at_the_accounted_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.trainer as trainer

    seen: list[tuple[int, float, int, int]] = []
    real = trainer.PoissonSampler

    class Recording(real):
        def __iter__(self):  # noqa: ANN204
            count = 0
            for idx in super().__iter__():
                assert idx.max(initial=-1) < self.n_samples
                count += 1
                yield idx
            seen.append((self.n_samples, self.sample_rate, self.steps, count))

    monkeypatch.setattr(trainer, "PoissonSampler", Recording)
    data = patients([20] * 30)
    cfg = DPConfig(expected_batch_size=6, unit="patient", windows_per_patient=4)
    res = train_dp(model.init_weights(seed=0), data, cfg=cfg, epochs=2, rng=sim(1))
    assert seen == [(30, 0.2, 10, 10)] and (res.sample_rate, res.steps) == plan_steps(30, cfg=cfg, epochs=2)
    assert res.n_samples == 30 and res.unit == "patient" and res.n_windows == 600


def test_patient_training_learns_and_is_reproducible_only_in_simulation() -> None:
    data = patients([30] * 20, seed=5)
    w0 = model.init_weights(seed=0)
    cfg = DPConfig(noise_multiplier=0.5, max_grad_norm=1.0, expected_batch_size=10, lr=0.1, unit="patient")
    a, again = (train_dp(w0, data, cfg=cfg, epochs=3, rng=sim(7)) for _ in range(2))
    np.testing.assert_array_equal(a.weights, again.weights)
    s1, s2 = (train_dp(w0, data, cfg=cfg, epochs=3, rng=PrivacyRNG.secure()) for _ in range(2))
    assert not np.allclose(s1.weights, s2.weights)
    assert np.isfinite(a.weights).all() and not np.allclose(a.weights, w0)


def test_bare_arrays_cannot_be_trained_per_patient() -> None:
    data = patients([5, 5])
    with pytest.raises(ValueError, match="patient"):
        train_dp(model.init_weights(seed=0), data.x, data.y, cfg=DPConfig(unit="patient"), epochs=1, rng=sim())
    with pytest.raises(TypeError, match="PrivacyRNG"):
        train_dp(model.init_weights(seed=0), data, cfg=DPConfig(), epochs=1, rng=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unit"):
        DPConfig(unit="reading")
