"""Benchmark: measured worst-case variance of each device LDP mechanism against its closed form.

The named peer is the closed form (``device.ldp.worst_case_variance``: Laplace 8/eps^2, Duchi et al. 2018,
Piecewise and Hybrid of Wang et al. ICDE 2019). For each epsilon and mechanism, ``privatize`` is run on a
grid of inputs x in [-1, 1] (spec [-1, 1], so no rescaling), the variance at each x is measured as the mean
of (y - x)^2 over the samples (y is unbiased), and the largest over the grid is reported beside the closed
form with their ratio. The maximum of noisy estimates sits a little above the truth (most visibly for
Laplace and Hybrid, whose variance does not depend on x), so the table also gives, per mechanism, the largest
|z| over the grid, z = (measured variance at x - closed form at x) / its standard error: |z| below ~4 means
the measurements agree with the closed form at every x, within sampling noise.

Run: ``python -m bench.ldp_variance [--samples 200000] [--grid 21] [--seed 0]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from device.ldp import MECHANISMS, LDPSpec, privatize, variance, worst_case_variance

EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0)


def measured_worst_case(
    mechanism: str, epsilon: float, *, grid: np.ndarray, samples: int, rng: np.random.Generator
) -> tuple[float, float, float]:
    """(largest measured variance over the grid, the x where it occurred, largest |z| over the grid)."""
    spec = LDPSpec(mechanism=mechanism, epsilon=epsilon, lo=-1.0, hi=1.0)
    best, best_x, max_z = -1.0, float("nan"), 0.0
    for x in grid:
        sq = (privatize(np.full(samples, x), spec=spec, rng=rng) - x) ** 2
        v = float(sq.mean())
        se = float(sq.std()) / np.sqrt(samples)
        diff = v - variance(float(x), mechanism=mechanism, epsilon=epsilon)
        if se > 1e-9 * v:
            max_z = max(max_z, abs(diff) / se)
        elif abs(diff) > 1e-9 * v:  # a constant squared error (Duchi at x = 0) must match exactly
            max_z = float("inf")
        if v > best:
            best, best_x = v, float(x)
    return best, best_x, max_z


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ldp_variance", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200_000, help="samples per input x (default 200000)")
    parser.add_argument("--grid", type=int, default=21, help="inputs x on linspace(-1, 1, grid) (default 21)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # An odd grid contains x = 0 (Duchi's worst case); the ends +-1 are PM's.
    grid = np.linspace(-1.0, 1.0, args.grid)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()

    print(f"# LDP worst-case variance on [-1, 1]: measured ({args.samples} samples x {args.grid} inputs) "
          "vs closed form\n")
    print("| eps | mechanism | measured worst | closed-form worst | measured / closed | at x | max abs z |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    max_rel = 0.0
    for eps in EPSILONS:
        for mech in MECHANISMS:
            measured, at_x, z = measured_worst_case(mech, eps, grid=grid, samples=args.samples, rng=rng)
            closed = worst_case_variance(mechanism=mech, epsilon=eps)
            ratio = measured / closed
            max_rel = max(max_rel, abs(ratio - 1.0))
            row = (f"{eps:g}", mech, f"{measured:.5g}", f"{closed:.5g}", f"{ratio:.4f}", f"{at_x:+.1f}")
            row += (f"{z:.1f}",)
            print("| " + " | ".join(row) + " |")
    print(f"\n({time.perf_counter() - start:.1f} s)")
    print(f"ldp_variance: max_rel_err={max_rel:.4f} mechanisms={len(MECHANISMS)} epsilons={len(EPSILONS)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
