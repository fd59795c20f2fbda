"""wearfed's round time over Flower's on the same task, at 5 and 50 clients, in one run.

The task (`bench.peer_task`): each client is one gateway of the demo (10 devices, one day, about 2,500 windows, its
own patients), trains wearfed's forecaster from the round's weights with the gateway's DP-SGD (`train_dp`,
`DPConfig()`, 2 local epochs), and FedAvg weights the new models by patients trained on.

- Flower (`bench.flower_round`): flwr 1.42's simulation engine (Ray backend, one actor per CPU), `FedAvg`, one
  warm-up round then `--reps` timed rounds; a round is Flower's own: messages to the actors, training, replies,
  FedAvg.
- wearfed (`bench.wearfed_round`): the clients train in a process pool as wide as Flower's actor pool (`--workers`,
  default the CPU count), then every participant's protocol runs over real HTTP to a uvicorn endpoint and the
  aggregator checks, sums and averages: plain (signed float32), ckks (CKKS-encrypted) and masked (secure
  aggregation + CKKS), each on the same trained clients. Each repetition runs right after one of Flower's rounds
  while Flower's ServerApp waits (its Ray processes idle but alive), so each pair shares the machine's load (other
  jobs on a shared machine come and go); the first pair is the warm-up of both.

Both sides do all the round's work on this machine with the same parallelism for training; wearfed's participants'
crypto and HTTP run on one core one after another (in deployment each runs on its own gateway, in parallel: the
critical path `bench.crypto` reports). Round times are medians over the reps, ratios medians of the per-pair
ratios. A FedAvg check proves both compute the same thing:
Flower's aggregate equals the weighted mean of its replies, wearfed's plain aggregate equals the weighted mean of its
clients, ckks and masked agree with plain to CKKS precision, and with `--seeded` (DP noise and sampling from a seed,
simulation mode) Flower's first-round model equals wearfed's.

With `--secagg`, Flower's SecAgg+ (`bench.flower_secagg`) is timed too, the like-for-like peer of the masked round,
each of its rounds paired with a wearfed masked repetition.

    .venv-bench/bin/python -m bench.flower_scale [--sizes 5,50 --reps 3 --secagg]

Last lines: per size `flower_scale: clients=<n> flower_round_s=<s> wearfed_plain_s=<s> wearfed_ckks_s=<s>
wearfed_masked_s=<s> ratio_plain=<x> ratio_ckks=<x> ratio_masked=<x>` (wearfed over Flower), then
`flower_scale_growth: sizes=<a>/<b> flower=<x> wearfed_plain=<x> wearfed_ckks=<x> wearfed_masked=<x>` (the largest
size's round time over the smallest's, each system); with `--secagg`, before it, per size `flower_secagg:
clients=<n> flower_secagg_round_s=<s> wearfed_masked_s=<s> ratio_masked_over_secagg=<x>`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor

import httpx
import numpy as np

from bench.crypto import Sink
from bench.peer_task import EPOCHS, weighted_mean, write_clients
from bench.wearfed_round import VARIANTS, Federation, timed_rounds
from federation import ckks, model

SEED = 20_240_601  # --seeded only


def run_size(n: int, *, reps: int, pool: ProcessPoolExecutor, sink: Sink, http: httpx.Client, public, secret,  # noqa: ANN001
             base: np.ndarray, data_dir: str, epochs: int, seed: int | None, workers: int,
             secagg_peer: bool = False) -> dict:
    """Flower's rounds with wearfed's repetitions interleaved: after Flower's round r (r = 1 the warm-up of both),
    wearfed's repetition r runs while Flower's ServerApp waits, so each timed pair shares the machine's load."""
    from bench.flower_round import flower_rounds

    fed = Federation(n, sink, http, public, secret)
    reps_done: list[tuple[dict, dict, dict]] = []

    def wearfed_rep(_round: int) -> None:
        reps_done.append(timed_rounds(fed, pool, base, data_dir, epochs, seed))

    flower = flower_rounds(n, reps, base, data_dir, epochs, seed, cpus=workers, between=wearfed_rep)
    timed = reps_done[1:]  # the first followed Flower's warm-up round and is wearfed's
    med = statistics.median
    seconds = {v: [r[0][v] for r in timed] for v in VARIANTS}
    _s, models, detail = timed[-1]
    want = weighted_mean(detail["trained"])
    checks = {"flower_fedavg_diff": flower["max_diff"],
              "wearfed_plain_diff": float(np.max(np.abs(models["plain"] - want))),
              "wearfed_ckks_diff": float(np.max(np.abs(models["ckks"] - models["plain"]))),
              "wearfed_masked_diff": float(np.max(np.abs(models["masked"] - models["plain"])))}
    if seed is not None:  # Flower's first round and every wearfed repetition start from `base`
        checks["flower_vs_wearfed_diff"] = float(np.max(np.abs(flower["first_model"] - models["plain"])))
    out = {"secagg": secagg_pair(n, fed, reps=reps, pool=pool, base=base, data_dir=data_dir, epochs=epochs, seed=seed,
                                 workers=workers, plain=models["plain"])} if secagg_peer else {}
    return {**out, "flower": med(flower["round_s"]), "flower_startup_s": flower["startup_s"],
            **{v: med(seconds[v]) for v in VARIANTS},
            "ratio": {v: med([w / f for w, f in zip(seconds[v], flower["round_s"], strict=True)]) for v in VARIANTS},
            "train_s": med([r[2]["train_s"] for r in timed]),
            "protocol_s": {v: med([r[2]["protocol_s"][v] for r in timed]) for v in VARIANTS}, "checks": checks}


def secagg_pair(n: int, fed: Federation, *, reps: int, pool: ProcessPoolExecutor, base: np.ndarray, data_dir: str,
                epochs: int, seed: int | None, workers: int, plain: np.ndarray) -> dict:
    """Flower's SecAgg+ rounds with wearfed's masked round interleaved as in `run_size`; with a seed, how far SecAgg+'s
    first model is from wearfed's plain one (its quantisation)."""
    from bench.flower_secagg import secagg_rounds

    masked: list[tuple[dict, dict, dict]] = []

    def masked_rep(_round: int) -> None:
        masked.append(timed_rounds(fed, pool, base, data_dir, epochs, seed, variants=("masked",)))

    sa = secagg_rounds(n, reps, base, data_dir, epochs, seed, cpus=workers, between=masked_rep)
    m = [r[0]["masked"] for r in masked[1:]]
    return {"round_s": statistics.median(sa["round_s"]), "masked_s": statistics.median(m),
            "startup_s": sa["startup_s"],
            "ratio": statistics.median([w / f for w, f in zip(m, sa["round_s"], strict=True)]),
            "err": None if seed is None else float(np.max(np.abs(sa["first_model"] - plain)))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="5,50", help="client counts, comma-separated")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--devices", type=int, default=10, help="devices (patients) per client")
    ap.add_argument("--days", type=float, default=1.0, help="days of readings per device")
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="parallel trainings on each side: wearfed's pool width and Flower's CPUs for Ray")
    ap.add_argument("--secagg", action="store_true",
                    help="also time Flower's SecAgg+ (the peer of wearfed's masked round), paired with masked rounds")
    ap.add_argument("--seeded", action="store_true",
                    help="simulation mode: DP noise and sampling from a seed, so both systems' first models match")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    seed = SEED if args.seeded else None
    secret = ckks.new_secret_context()
    public = ckks.load_context(ckks.public_bytes(secret))
    base = model.init_weights(seed=0).astype(np.float32)
    load = os.getloadavg()
    print(f"flower_scale: sizes {sizes}, {args.reps} timed reps, {args.devices} devices x {args.days} d per client, "
          f"{args.epochs} local epochs, {args.workers} workers, {os.cpu_count()} CPUs, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}{', seeded (simulation mode)' if seed is not None else ''}",
          flush=True)
    rows: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="wearfed-flower-") as data_dir, \
            ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        write_clients(data_dir, max(sizes), devices=args.devices, days=args.days)
        sink = Sink(keep=True)
        with httpx.Client(base_url=sink.url, timeout=300) as http:
            for n in sizes:
                r = rows[n] = run_size(n, reps=args.reps, pool=pool, sink=sink, http=http, public=public,
                                       secret=secret, base=base, data_dir=data_dir, epochs=args.epochs, seed=seed,
                                       workers=args.workers, secagg_peer=args.secagg)
                print(f"clients={n}: Flower round {r['flower']:.3f} s (Ray start/stop {r['flower_startup_s']:.1f} s); "
                      f"wearfed training {r['train_s']:.3f} s + protocol and aggregation: " + ", ".join(
                          f"{v} {r['protocol_s'][v]:.3f} s" for v in VARIANTS), flush=True)
                checks = " ".join(f"{k}={v:.3g}" for k, v in r["checks"].items())
                print(f"fedavg_check: clients={n} {checks}", flush=True)
        sink.server.should_exit = True
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for n, r in rows.items():
        print(f"flower_scale: clients={n} flower_round_s={r['flower']:.3f} " + " ".join(
            f"wearfed_{v}_s={r[v]:.3f}" for v in VARIANTS) + " " + " ".join(
            f"ratio_{v}={r['ratio'][v]:.2f}" for v in VARIANTS))
    for n, r in rows.items():
        if "secagg" in r:
            sa = r["secagg"]
            err = "" if sa["err"] is None else f" secagg_vs_wearfed_max_abs_diff={sa['err']:.3g}"
            print(f"flower_secagg: clients={n} flower_secagg_round_s={sa['round_s']:.3f} wearfed_masked_s="
                  f"{sa['masked_s']:.3f} ratio_masked_over_secagg={sa['ratio']:.2f}{err}")
    lo, hi = min(rows), max(rows)
    if lo != hi:
        print(f"flower_scale_growth: sizes={hi}/{lo} flower={rows[hi]['flower'] / rows[lo]['flower']:.2f} " + " ".join(
            f"wearfed_{v}={rows[hi][v] / rows[lo][v]:.2f}" for v in VARIANTS))


if __name__ == "__main__":
    main()
