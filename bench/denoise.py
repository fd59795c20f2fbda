"""Does smoothing locally-privatised readings on the gateway help the forecaster? Held-out RMSE@30 per smoother.

Training data: virtual patients' CGM privatised per reading on the device (device.ldp, as the fleet does),
stored on the 5-min grid, optionally smoothed (federation.windows.Denoise), windowed and trained with the
gateway's record-level DP-SGD (gateway.trainer.train_dp, unit "window", seeded simulation RNG). Evaluation: clean
CGM of held-out patients (sim.evaluate), since a device forecasts from its own raw readings. Same seeds for every
smoother; prints one row per (mechanism, eps).

    python -m bench.denoise [--patients 20 --days 3 --epochs 5 --seeds 2]
"""

from __future__ import annotations

import argparse

import numpy as np

from device.ldp import LDPSpec, privatize
from device.sensor import synthetic_trace
from federation import model
from federation.clock import DEFAULT_SIM_START
from federation.privacy_rng import PrivacyRNG
from federation.windows import Denoise, windows_from_series
from gateway.trainer import DPConfig, train_dp
from sim.evaluate import evaluate, heldout_set

CANDIDATES = {
    "none": Denoise(),
    "centred5-targets": Denoise(method="centred", width=5, apply_to="targets"),
    "centred5-both": Denoise(method="centred", width=5, apply_to="both"),
    "centred9-targets": Denoise(method="centred", width=9, apply_to="targets"),
    "causal5-both": Denoise(method="causal", width=5, apply_to="both"),
}


def privatised_series(*, mechanism: str, epsilon: float, patients: int, days: float, seed: int
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
    spec = LDPSpec(mechanism=mechanism, epsilon=epsilon, lo=40.0, hi=400.0)
    rng = np.random.default_rng(seed)
    out = []
    for k in range(patients):
        t, _bg, cgm = synthetic_trace(seed=seed, patient=f"train-{k:03d}", start=DEFAULT_SIM_START, days=days)
        out.append((t, privatize(cgm, spec=spec, rng=rng)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--days", type=float, default=3.0)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--eps", default="8,4,2")
    ap.add_argument("--mechanisms", default="hybrid,laplace")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    held = heldout_set(source="synthetic", patients=10, days=2.0, seed=991)
    cfg = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=64, lr=0.05, unit="window")
    names = list(CANDIDATES)
    print(f"held-out: {len(held.x)} windows from {held.patients} patients; DP-SGD noise 1.0, {args.epochs} epochs; "
          f"RMSE@30 mg/dL, mean of {args.seeds} seeds")
    print("| mechanism | LDP eps | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for mech in args.mechanisms.split(","):
        for eps in (float(e) for e in args.eps.split(",")):
            scores = {n: [] for n in names}
            for s in range(args.seeds):
                series = privatised_series(mechanism=mech, epsilon=eps, patients=args.patients, days=args.days,
                                           seed=100 + s)
                for n in names:
                    x, y = windows_from_series(series, denoise=CANDIDATES[n])
                    res = train_dp(model.init_weights(seed=s), x, y, cfg=cfg, epochs=args.epochs,
                                   rng=PrivacyRNG.simulation(s))
                    scores[n].append(evaluate(res.weights, held)["rmse30"])
            row = " | ".join(f"{np.mean(v):.1f}" for v in scores.values())
            print(f"| {mech} | {eps:g} | {row} |", flush=True)
    persistence = evaluate(model.init_weights(seed=0), held)["persistence_rmse30"]
    print(f"persistence RMSE@30 on the held-out set: {persistence:.1f}")


if __name__ == "__main__":
    main()
