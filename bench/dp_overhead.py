"""DP-SGD overhead: one epoch of plain torch vs Opacus DP-SGD on the same model and the same windows, same run.

Plain: SGD with momentum, shuffled batches of 64. DP-SGD: the gateway's own code path (gateway.trainer:
Opacus with Poisson sampling at an expected batch of 64, per-sample clipping, Gaussian noise, per-sample
gradients in `GRAD_SAMPLE_MODE`), one epoch = 1/q steps. One thread each; each is timed `--reps` times,
interleaved, and the fastest epoch of each is compared. Times are CPU seconds of this process
(`time.process_time`), so other load on a shared machine does not leak into the ratio. Opacus' default hook
mode is printed alongside.

    python -m bench.dp_overhead [--patients 20 --days 5 --reps 5]

Last line: `dp_overhead: plain_s=<t> dp_s=<t> ratio=<r> params=<n> windows=<n>`.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from device.sensor import synthetic_trace
from federation import model
from federation.clock import DEFAULT_SIM_START
from federation.windows import windows_from_series
from gateway.trainer import GRAD_SAMPLE_MODE, DPConfig, make_private, plan_steps, run_steps


def plain_epoch(x: np.ndarray, y: np.ndarray, *, batch: int) -> float:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    net = model.to_torch(model.init_weights(seed=0))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(TensorDataset(torch.from_numpy(model.normalise(x)), torch.from_numpy(model.normalise(y))),
                        batch_size=batch, shuffle=True)
    loss_fn = torch.nn.MSELoss()
    net.train()
    t = time.process_time()
    for xb, yb in loader:
        opt.zero_grad(set_to_none=True)
        loss_fn(net(xb), yb).backward()
        opt.step()
    return time.process_time() - t


def dp_epoch(x: np.ndarray, y: np.ndarray, *, cfg: DPConfig, mode: str) -> float:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    net = model.to_torch(model.init_weights(seed=0))
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9)
    q, steps = plan_steps(len(x), cfg=cfg, epochs=1)
    loader = DataLoader(TensorDataset(torch.from_numpy(model.normalise(x)), torch.from_numpy(model.normalise(y))),
                        batch_size=max(1, int(round(q * len(x)))))
    net, opt, loader = make_private(net, opt, loader, cfg=cfg, grad_sample_mode=mode)
    net.train()
    t = time.process_time()
    run_steps(net, opt, loader, torch.nn.MSELoss(), steps)
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--days", type=float, default=5.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    series = [synthetic_trace(seed=5, patient=f"bench-{k:03d}", start=DEFAULT_SIM_START, days=args.days)
              for k in range(args.patients)]
    x, y = windows_from_series([(t, cgm) for t, _bg, cgm in series])
    cfg = DPConfig(expected_batch_size=args.batch)
    modes = [GRAD_SAMPLE_MODE] + [m for m in ("hooks",) if m != GRAD_SAMPLE_MODE]
    times: dict[str, list[float]] = {"plain": [], **{m: [] for m in modes}}
    plain_epoch(x[:512], y[:512], batch=args.batch)  # warm-up (lazy imports, allocator)
    for m in modes:
        dp_epoch(x[:512], y[:512], cfg=cfg, mode=m)
    for _ in range(args.reps):
        times["plain"].append(plain_epoch(x, y, batch=args.batch))
        for m in modes:
            times[m].append(dp_epoch(x, y, cfg=cfg, mode=m))
    best = {k: min(v) for k, v in times.items()}
    print(f"{len(x)} windows, {model.N_PARAMS} params, batch {args.batch}, 1 thread, best of {args.reps} epochs, "
          "CPU seconds")
    for k, v in best.items():
        print(f"  {k:>6}: {v:.3f} s/epoch" + ("" if k == "plain" else f"  ({v / best['plain']:.2f}x plain)"))
    dp = best[GRAD_SAMPLE_MODE]
    print(f"dp_overhead: plain_s={best['plain']:.3f} dp_s={dp:.3f} ratio={dp / best['plain']:.2f} "
          f"params={model.N_PARAMS} windows={len(x)}")


if __name__ == "__main__":
    main()
