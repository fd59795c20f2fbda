"""Re-check a run's stored metrics against a gates file: every round of a replay's summary.json, its metrics by
source, through `cloud.gates.check` (accuracy and fairness; privacy gates are left out, their inputs are not in
the summary). The previous passing round stands in for the promoted model. A check of a pure function on the
stored figures, not a run: docs/results.md ("Fairness gates and explanations on the demo").

    python -m bench.regate_summary runs/demo/summary.json [--gates FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from cloud.gates import Candidate, check, failures, load_gates
from federation.errors import ConfigError
from sim.summary import load_summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("summary", type=Path)
    ap.add_argument("--gates", type=Path, default=None, help="gates TOML (default: the shipped one)")
    args = ap.parse_args(argv)
    try:
        cfg = dataclasses.replace(load_gates(args.gates), lineage_epsilon_max=None, participant_cap=False)
        rounds = load_summary(args.summary).rounds
    except (ConfigError, OSError, ValueError) as exc:
        print(f"error: {args.summary}: {exc}", file=sys.stderr)
        return 2
    promoted: dict = {}
    promoted_version: int | None = None
    for r in rounds:
        if not r.metrics_by_source or r.model_version is None:
            continue
        res = check(cfg, Candidate(version=r.model_version, metrics=r.metrics_by_source,
                                   promoted_version=promoted_version, promoted_metrics=promoted))
        bad = failures(res)
        print(f"round {r.round} v{r.model_version}: " + ("PASS" if not bad else "; ".join(f.message for f in bad)))
        for x in res:
            if x.message.startswith("fairness"):
                print(f"    {x.message}")
        if not bad:
            promoted, promoted_version = r.metrics_by_source, r.model_version
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
