"""The drift alert threshold, measured: KL of honest vs sensor-drifted privatised telemetry against training.

Simulates gateways of UVA/Padova virtual patients (`sim.patients`), privatises every reading as the devices do
(Hybrid LDP at epsilon 8 on 40-400 mg/dL, `device.ldp`), cuts reading time into the gateway's 6-h windows
(`gateway.drift`) and scores each window the way the cloud does (`federation.drift.kl_divergence` against the
pooled histogram of every earlier window of every gateway, once those cover a day: the training reference).
No-drift windows give the null distribution (its maximum and 99th percentile are what the threshold must
clear); then one gateway's sensors drift by D mg/dL per day from `--drift-start-hours`, as the `faults`
scenario does, and the table shows from which D its windows cross the threshold.

Usage: ``python -m bench.drift_threshold [--gateways 3] [--devices 10] [--days 4] [--seeds 3]``. Last line:
``drift: null_max=... null_p99=... threshold=... first_detected_mgdl_per_day=...``.
"""

from __future__ import annotations

import argparse

import numpy as np

from cloud.drift import DEFAULT_MIN_REFERENCE_HOURS, DEFAULT_THRESHOLD
from device.ldp import LDPSpec, privatize
from federation.clock import DEFAULT_SIM_START
from federation.drift import HI_MGDL, LO_MGDL, histogram, kl_divergence
from sim.patients import training_patients

WINDOW_S = 6 * 3600


def gateway_windows(cgm: np.ndarray, times: np.ndarray, *, seed: int) -> list[list[int]]:
    """Histograms of one gateway's privatised readings (devices x time), per 6-h window."""
    rng = np.random.default_rng(seed)
    spec = LDPSpec(mechanism="hybrid", epsilon=8.0, lo=LO_MGDL, hi=HI_MGDL)
    out = []
    for w0 in range(0, int(times[-1] - times[0]) + 1 - WINDOW_S + 1, WINDOW_S):
        m = (times - times[0] >= w0) & (times - times[0] < w0 + WINDOW_S)
        v = cgm[:, m].ravel()
        v = v[np.isfinite(v)]
        out.append(histogram(privatize(v, spec=spec, rng=rng)))
    return out


def scores(hists: list[list[list[int]]]) -> np.ndarray:
    """KL of window k of each gateway vs the pooled windows 0..k-1 of all gateways (the cloud's lineage
    reference once rounds have snapshotted them), scored once that reference covers a day (the cloud's
    `min_reference_hours`); shape (gateways, windows), NaN where not scored."""
    g, n = len(hists), len(hists[0])
    first = max(1, int(np.ceil(DEFAULT_MIN_REFERENCE_HOURS * 3600 / WINDOW_S)))
    out = np.full((g, n), np.nan)
    for k in range(first, n):
        ref = np.sum([hists[j][i] for j in range(g) for i in range(k)], axis=0)
        for j in range(g):
            out[j, k] = kl_divergence(hists[j][k], [int(c) for c in ref])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gateways", type=int, default=3)
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--days", type=float, default=4.0)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--drift-start-hours", type=float, default=14.0)
    ap.add_argument("--drifts", default="15,50,100,200,400", help="mg/dL per day, comma separated")
    ap.add_argument("--window-hours", type=float, default=6.0, help="reading time per histogram (gateway default 6)")
    args = ap.parse_args()
    global WINDOW_S
    WINDOW_S = int(args.window_hours * 3600)
    drifts = [float(d) for d in args.drifts.split(",")]
    null, by_drift = [], {d: [] for d in drifts}
    for seed in range(args.seeds):
        pats = training_patients("uva-padova", args.gateways * args.devices, days=args.days, seed=seed,
                                 start=DEFAULT_SIM_START)
        times = pats[0].times.astype(np.float64)
        cgm = np.vstack([p.cgm for p in pats]).reshape(args.gateways, args.devices, -1)
        hists = [gateway_windows(cgm[g], times, seed=seed * 100 + g) for g in range(args.gateways)]
        s = scores(hists)
        null.extend(s[~np.isnan(s)])
        days_in = np.clip((times - times[0] - args.drift_start_hours * 3600) / 86400, 0, None)
        for d in drifts:
            drifted = np.clip(cgm[0] + d * days_in, 40, 400)
            h = [gateway_windows(drifted, times, seed=seed * 100)] + hists[1:]
            kl = scores(h)[0]
            # windows that end after the drift started (and have an earlier window as reference)
            starts = np.arange(len(kl)) * WINDOW_S
            after = (starts + WINDOW_S > args.drift_start_hours * 3600) & ~np.isnan(kl)
            by_drift[d].append(kl[after])
    null = np.asarray(null)
    print(f"no drift: {null.size} windows ({args.window_hours:g} h each, {args.devices} devices per gateway): KL mean "
          f"{null.mean():.4f}, p50 {np.percentile(null, 50):.4f}, p99 {np.percentile(null, 99):.4f}, "
          f"max {null.max():.4f}")
    print(f"{'drift mg/dL/day':>16} {'windows':>8} {'median KL':>10} {'max KL':>8} {'> threshold':>12}")
    first = None
    for d in drifts:
        kl = np.concatenate(by_drift[d])
        over = float(np.mean(kl > DEFAULT_THRESHOLD))
        if first is None and over > 0:
            first = d
        if kl.size:
            print(f"{d:>16g} {kl.size:>8} {np.median(kl):>10.4f} {kl.max():>8.4f} {over:>12.0%}")
    print(f"drift: null_max={null.max():.4f} null_p99={np.percentile(null, 99):.4f} threshold={DEFAULT_THRESHOLD} "
          f"first_detected_mgdl_per_day={first}")


if __name__ == "__main__":
    main()
