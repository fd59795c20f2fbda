"""DP-SGD overhead: one epoch of plain torch vs the gateway's DP-SGD on the same model and the same windows, same run.

Plain: SGD with momentum, a shuffled pass in batches of 64 (`torch.randperm`, each batch gathered by tensor
indexing). DP-SGD: the gateway's own default code path (`gateway.trainer.make_private` with `DPConfig()`'s
`per_sample`, + `run_steps` over a `gateway.dp_sampling.PoissonSampler`): per-sample clipping by book-keeping
(`gateway.bk_clipping`), flat clipping, Gaussian noise and Poisson sampling at an expected batch of 64 from the OS
CSPRNG (`federation.privacy_rng.PrivacyRNG.secure()`, `gateway.dp_noise`: what nodes run), one epoch = 1/q steps,
each batch gathered by the same tensor indexing as plain. The same path with seeded numpy randomness (simulation
mode) is timed beside it, so the cost of the secure RNG is its own line (`dp_overhead_rng:`). The user-level path
(unit "patient", the nodes' default) is timed per window processed (`dp_overhead_patient:`). Data feeding is
therefore like for like; each side draws its batches (permutation, or Binomial size + uniform subset) inside the
timed epoch. One thread; each variant is timed `--reps` times, interleaved, and the fastest epoch of each is
compared. Times are CPU seconds of this process (`time.process_time`), so other load on a shared machine does not
leak into the ratio.

Printed alongside, for reference: the gateway path with `per_sample="opacus"` in Opacus' per-sample gradient modes
(`opacus-ew` is the previous default; its ratio is also printed as a `dp_overhead_opacus:` line), plain torch fed by a
DataLoader (per-sample collate), and the previous gateway path (`PrivacyEngine.make_private`: DPDataLoader with an
N-long Bernoulli mask per step, stock per-parameter DPOptimizer).

    python -m bench.dp_overhead [--patients 20 --days 5 --reps 5 --modes ew,hooks] [--phases]

`--phases` also splits one epoch of plain, the default DP path and the Opacus ew path into batch drawing,
zero_grad, forward + loss, backward, clip + noise (the DP optimizer's `pre_step`) and the SGD update (a copy of
the loops with a timer between phases).

Last lines: `dp_overhead_opacus: ... mode=ew` (reference), `dp_overhead_patient: ... rng=secure`,
`dp_overhead_rng: secure_s=<t> seeded_s=<t> ratio=<r>` and `dp_overhead: plain_s=<t> dp_s=<t> ratio=<r> params=<n>
windows=<n> unit=window rng=<which>` (the record-level path with the secure RNG, comparable with earlier runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings
from collections.abc import Callable

import numpy as np

from device.sensor import synthetic_trace
from federation import model
from federation.clock import DEFAULT_SIM_START
from federation.privacy_rng import PrivacyRNG
from federation.windows import Windows, windows_from_series
from gateway.dp_sampling import PoissonSampler
from gateway.trainer import (
    GRAD_SAMPLE_MODE,
    DPConfig,
    make_private,
    plan_steps,
    record_empty_batch,
    run_steps,
    train_dp,
)

RNG_DESCRIPTION = "secure(os.urandom,Box-Muller,sum-of-4)"


def plain_epoch(xt, yt, *, batch: int, seed: int) -> float:  # noqa: ANN001
    import torch

    net = model.to_torch(model.init_weights(seed=0))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    loss_fn = torch.nn.MSELoss()
    gen = torch.Generator().manual_seed(seed)
    net.train()
    t = time.process_time()
    order = torch.randperm(len(xt), generator=gen)
    for i in range(0, len(xt), batch):
        rows = order[i : i + batch]
        opt.zero_grad(set_to_none=True)
        loss_fn(net(xt[rows]), yt[rows]).backward()
        opt.step()
    return time.process_time() - t


def plain_dataloader_epoch(xt, yt, *, batch: int, seed: int) -> float:  # noqa: ANN001
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    net = model.to_torch(model.init_weights(seed=0))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(TensorDataset(xt, yt), batch_size=batch, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    loss_fn = torch.nn.MSELoss()
    net.train()
    t = time.process_time()
    for xb, yb in loader:
        opt.zero_grad(set_to_none=True)
        loss_fn(net(xb), yb).backward()
        opt.step()
    return time.process_time() - t


def privacy_rng(kind: str, seed: int) -> PrivacyRNG:
    return PrivacyRNG.secure() if kind == "secure" else PrivacyRNG.simulation(seed)


def dp_epoch(xt, yt, *, cfg: DPConfig, mode: str | None, seed: int, rng: str = "secure") -> float:  # noqa: ANN001
    """The gateway path: `mode` None is cfg's per-sample method, else per_sample="opacus" in that Opacus mode;
    noise and sampling from the OS CSPRNG (`rng` "secure", what nodes run) or seeded numpy ("simulation")."""
    import torch

    net = model.to_torch(model.init_weights(seed=0))
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9)
    q, steps = plan_steps(len(xt), cfg=cfg, epochs=1)
    source = privacy_rng(rng, seed)
    if mode is None:
        net, opt = make_private(net, opt, cfg=cfg, n_samples=len(xt), rng=source)
    else:
        net, opt = make_private(net, opt, cfg=cfg, n_samples=len(xt), grad_sample_mode=mode, per_sample="opacus",
                                rng=source)
    sampler = PoissonSampler(len(xt), sample_rate=q, steps=steps, rng=source)
    net.train()
    t = time.process_time()
    run_steps(net, opt, xt, yt, sampler, torch.nn.MSELoss())
    return time.process_time() - t


def patient_epoch(windows: Windows, *, cfg: DPConfig, seed: int, rng: str = "secure") -> tuple[float, int]:
    """One pass of user-level DP-SGD over the patients (the nodes' default): (CPU seconds, windows visited)."""
    t = time.process_time()
    res = train_dp(model.init_weights(seed=0), windows, cfg=cfg, epochs=1, rng=privacy_rng(rng, seed))
    visited = res.steps * round(res.sample_rate * res.n_samples) * cfg.windows_per_patient
    return time.process_time() - t, visited


def engine_epoch(xt, yt, *, cfg: DPConfig, seed: int) -> float:  # noqa: ANN001
    """The previous gateway path: PrivacyEngine.make_private (DPDataLoader, stock DPOptimizer), ew mode."""
    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    net = model.to_torch(model.init_weights(seed=0))
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9)
    q, steps = plan_steps(len(xt), cfg=cfg, epochs=1)
    loader = DataLoader(TensorDataset(xt, yt), batch_size=max(1, int(round(q * len(xt)))))
    net, opt, loader = PrivacyEngine(accountant=cfg.accountant).make_private(
        module=net, optimizer=opt, data_loader=loader, noise_multiplier=cfg.noise_multiplier,
        max_grad_norm=cfg.max_grad_norm, poisson_sampling=True, grad_sample_mode="ew")
    loss_fn = torch.nn.MSELoss()
    net.train()
    t = time.process_time()
    for done, (xb, yb) in enumerate(loader):
        if done == steps:
            break
        opt.zero_grad(set_to_none=True)
        if len(xb):
            loss_fn(net(xb), yb).backward()
        else:
            for p in opt.params:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
        opt.step()
    return time.process_time() - t


PHASES = ("batch", "zero_grad", "forward", "backward", "clip_noise", "update")


def phase_epoch(xt, yt, *, cfg: DPConfig, dp: bool, seed: int) -> dict[str, float]:  # noqa: ANN001
    """CPU seconds per phase over one epoch: plain (`dp=False`) or the gateway's DP-SGD path for `cfg`."""
    import torch

    torch.manual_seed(seed)
    net = model.to_torch(model.init_weights(seed=0))
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9)
    loss_fn = torch.nn.MSELoss()
    n = len(xt)
    if dp:
        q, steps = plan_steps(n, cfg=cfg, epochs=1)
        rng = PrivacyRNG.secure()
        net, opt = make_private(net, opt, cfg=cfg, n_samples=n, rng=rng)
        draws = iter(PoissonSampler(n, sample_rate=q, steps=steps, rng=rng))
    else:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        draws = (order[i : i + cfg.expected_batch_size] for i in range(0, n, cfg.expected_batch_size))
    net.train()
    spent = dict.fromkeys(PHASES, 0.0)
    clock = time.process_time
    while True:
        t0 = clock()
        idx = next(draws, None)
        if idx is None:
            break
        rows = torch.from_numpy(idx) if dp else idx
        xb, yb = xt[rows], yt[rows]
        t1 = clock()
        opt.zero_grad(set_to_none=True)
        t2 = clock()
        loss = loss_fn(net(xb), yb) if len(xb) else None
        t3 = clock()
        if loss is not None:
            loss.backward()
        else:
            record_empty_batch(opt)
        t4 = clock()
        if dp:
            opt.pre_step()
        t5 = clock()
        (opt.original_optimizer if dp else opt).step()
        t6 = clock()
        for k, a, b in zip(PHASES, (t0, t1, t2, t3, t4, t5), (t1, t2, t3, t4, t5, t6), strict=True):
            spent[k] += b - a
    return spent


def print_phases(xt, yt, *, cfg: DPConfig, reps: int) -> None:  # noqa: ANN001
    rows = {}
    opacus = dataclasses.replace(cfg, per_sample="opacus")
    for name, dp, c in (("plain", False, cfg), (f"gateway-{cfg.per_sample}", True, cfg),
                        (f"opacus-{GRAD_SAMPLE_MODE}", True, opacus)):
        phase_epoch(xt[:512], yt[:512], cfg=c, dp=dp, seed=0)
        runs = [phase_epoch(xt, yt, cfg=c, dp=dp, seed=r + 1) for r in range(reps)]
        rows[name] = min(runs, key=lambda r: sum(r.values()))
    print("phases (CPU s/epoch, fastest epoch): " + " ".join(f"{k:>10}" for k in (*PHASES, "total")))
    for name, r in rows.items():
        print(f"  {name:>32}: " + " ".join(f"{v:10.3f}" for v in (*r.values(), sum(r.values()))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--days", type=float, default=5.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--modes", default="ew,hooks", help="Opacus grad_sample modes to time (ew, hooks, functorch)")
    ap.add_argument("--no-reference", action="store_true", help="skip the DataLoader and PrivacyEngine lines")
    ap.add_argument("--phases", action="store_true", help="also split one epoch of each side into phases")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    series = {f"bench-{k:03d}": synthetic_trace(seed=5, patient=f"bench-{k:03d}", start=DEFAULT_SIM_START,
                                                days=args.days) for k in range(args.patients)}
    windows = windows_from_series({k: (t, cgm) for k, (t, _bg, cgm) in series.items()})
    x, y = windows
    xt, yt = torch.from_numpy(model.normalise_inputs(x)), torch.from_numpy(model.normalise(y))
    cfg = DPConfig(expected_batch_size=args.batch, unit="window")
    patient_cfg = DPConfig(expected_batch_size=max(1, args.patients // 4), unit="patient")
    modes = [GRAD_SAMPLE_MODE] + [m for m in args.modes.split(",") if m and m != GRAD_SAMPLE_MODE]
    default = f"gateway-{cfg.per_sample}"
    runs: dict[str, Callable[[object, object, int], float]] = {
        "plain": lambda a, b, s: plain_epoch(a, b, batch=args.batch, seed=s),
        default: lambda a, b, s: dp_epoch(a, b, cfg=cfg, mode=None, seed=s),
        f"{default}-seeded": lambda a, b, s: dp_epoch(a, b, cfg=cfg, mode=None, seed=s, rng="simulation"),
        **{f"opacus-{m}": (lambda a, b, s, m=m: dp_epoch(a, b, cfg=cfg, mode=m, seed=s)) for m in modes},
    }
    if not args.no_reference:
        runs["plain_dataloader"] = lambda a, b, s: plain_dataloader_epoch(a, b, batch=args.batch, seed=s)
        runs["opacus_engine"] = lambda a, b, s: engine_epoch(a, b, cfg=cfg, seed=s)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for run in runs.values():  # warm-up (lazy imports, allocator)
        run(xt[:512], yt[:512], 0)
    for rep in range(args.reps):
        for k, run in runs.items():
            times[k].append(run(xt, yt, rep + 1))
    best = {k: float(np.min(v)) for k, v in times.items()}
    patient = min((patient_epoch(windows, cfg=patient_cfg, seed=r + 1) for r in range(args.reps)),
                  key=lambda tv: tv[0] / tv[1])
    print(f"{len(x)} windows, {model.N_PARAMS} params, batch {args.batch}, 1 thread, best of {args.reps} epochs, "
          "CPU seconds")
    for k, v in best.items():
        print(f"  {k:>16}: {v:.3f} s/epoch" + ("" if k == "plain" else f"  ({v / best['plain']:.2f}x plain)"))
    if args.phases:
        print_phases(xt, yt, cfg=cfg, reps=args.reps)
    ref = best[f"opacus-{GRAD_SAMPLE_MODE}"]
    print(f"dp_overhead_opacus: plain_s={best['plain']:.3f} dp_s={ref:.3f} ratio={ref / best['plain']:.2f} "
          f"mode={GRAD_SAMPLE_MODE}")
    per_window_plain = best["plain"] / len(x)
    print(f"dp_overhead_patient: per_window_plain_us={1e6 * per_window_plain:.2f} "
          f"per_window_dp_us={1e6 * patient[0] / patient[1]:.2f} "
          f"ratio={patient[0] / patient[1] / per_window_plain:.2f} unit=patient windows_per_patient="
          f"{patient_cfg.windows_per_patient} rng=secure")
    seeded = best[f"{default}-seeded"]
    dp = best[default]
    print(f"dp_overhead_rng: secure_s={dp:.3f} seeded_s={seeded:.3f} ratio={dp / seeded:.2f}")
    print(f"dp_overhead: plain_s={best['plain']:.3f} dp_s={dp:.3f} ratio={dp / best['plain']:.2f} "
          f"params={model.N_PARAMS} windows={len(x)} unit=window rng={RNG_DESCRIPTION}")


if __name__ == "__main__":
    main()
