"""How much one federated study run says: RMSE@30 of the same study over several training seeds.

The cohort and held-out patients are the data seed's (`StudyConfig.seed`, 7 by default); each run changes only the
training randomness (initial weights, patient sampling, DP-SGD noise) by passing `StudyConfig(seed=s)` with that cohort
and held-out set. Simulation mode (seeded, labelled in each result). Prints one line per seed, then mean and sample
standard deviation; a setting is better than another only by more than that spread.

    python -m bench.study_seeds --patients 3000 --dp-epsilon 4 --seeds 7,8,9,10,11 [--set max_grad_norm=0.2 ...]
"""

from __future__ import annotations

import argparse
import statistics
import time

from sim.study import StudyConfig, heldout, run_study, training_cohort


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=3000)
    ap.add_argument("--dp-epsilon", type=float, default=None, help="DP-SGD epsilon per patient (default: none)")
    ap.add_argument("--dp-lr", type=float, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="any other StudyConfig field (numbers), e.g. --set patients_per_step=512")
    ap.add_argument("--seeds", default="7,8,9", help="training seeds, comma-separated")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    extra = {} if args.dp_lr is None else {"dp_lr": args.dp_lr}
    for item in args.set:
        field, _, value = item.partition("=")
        if field not in StudyConfig.__dataclass_fields__:
            ap.error(f"--set {item}: StudyConfig has no field {field!r}")
        try:
            extra[field] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            ap.error(f"--set {item}: {value!r} is not a number")
    data = StudyConfig(patients=args.patients, dp_epsilon=args.dp_epsilon, **extra)
    cohort, test = training_cohort(data), heldout(data)
    scores = []
    for seed in seeds:
        t0 = time.time()
        result = run_study(StudyConfig(patients=args.patients, dp_epsilon=args.dp_epsilon, seed=seed, **extra),
                           test=test, cohort=cohort)
        scores.append(result["federated"]["rmse30"])
        print(f"seed {seed}: RMSE@30 {scores[-1]:.2f} mg/dL ({time.time() - t0:.0f} s; {result['simulation']})",
              flush=True)
    spread = statistics.stdev(scores) if len(scores) > 1 else float("nan")
    unit = "none" if args.dp_epsilon is None else f"DP-SGD epsilon {args.dp_epsilon:g} per patient"
    print(f"study_seeds: patients={args.patients} privacy={unit} seeds={len(scores)} "
          f"mean={statistics.mean(scores):.2f} sd={spread:.2f}")


if __name__ == "__main__":
    main()
