"""The privacy-utility sweep: device LDP epsilon x DP-SGD epsilon -> held-out forecast accuracy.

Writes `sweep.csv` (one row per setting; `none` where a mechanism is off) and `sweep.md` (the same table for
people), plus the baselines measured on the same held-out windows in the same run.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from sim.study import StudyConfig, centralised_upper_bound, run_study

LDP_GRID: tuple[float | None, ...] = (None, 8.0, 4.0, 2.0)
DP_GRID: tuple[float | None, ...] = (None, 8.0, 4.0, 2.0, 1.0, 0.5)
COLUMNS = ("ldp_epsilon", "dp_epsilon", "rmse30", "mae30", "mard30", "clarke_ab30", "parkes_ab30", "hypo_sens30",
           "hypo_spec30", "bg_rmse30", "rmse60", "mae60", "mard60", "clarke_ab60", "bg_rmse60")


def _cell(v: object) -> str:
    if v is None:
        return "none"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def run_sweep(base: StudyConfig, out: Path, *, ldp_grid: Sequence[float | None] = LDP_GRID,
              dp_grid: Sequence[float | None] = DP_GRID, progress: Callable[[str], None] | None = None) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    rows = _finished(out)  # an interrupted sweep resumes where it stopped
    done = {(r["ldp_epsilon"], r["dp_epsilon"]) for r in rows}
    for ldp in ldp_grid:
        for dp in dp_grid:
            if (ldp, dp) in done:
                continue
            cfg = replace(base, ldp_epsilon=ldp, dp_epsilon=dp)
            if progress:
                progress(f"ldp_epsilon={_cell(ldp)} dp_epsilon={_cell(dp)}")
            result = run_study(cfg)
            fed = result["federated"]
            rows.append({"ldp_epsilon": ldp, "dp_epsilon": dp, **{c: fed.get(c) for c in COLUMNS[2:]},
                         "_baselines": {"persistence": result["persistence"], "linear": result["linear"]}})
            _write(out, rows, base)
    upper = centralised_upper_bound(base)
    _write(out, rows, base, upper=upper)
    return rows


def _finished(out: Path) -> list[dict]:
    try:
        return json.loads((out / "sweep.json").read_text())["rows"]
    except (FileNotFoundError, ValueError, KeyError):
        return []


def _write(out: Path, rows: list[dict], base: StudyConfig, *, upper: dict | None = None) -> None:
    """Rewrite the outputs after every setting, so an interrupted sweep keeps what it finished."""
    with open(out / "sweep.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in COLUMNS])
    base_rows = rows[0]["_baselines"] if rows else {}
    lines = [f"# Privacy-utility sweep ({base.source}, {base.gateways} gateways x {base.patients_per_gateway} "
             f"patients + {base.hospitals} hospital(s) x {base.hospital_patients}, {base.days} days, "
             f"{base.rounds} rounds, delta {base.dp_delta}, LDP {base.ldp_mechanism} per reading, "
             f"DP-SGD epsilon cumulative per training window, {base.accountant} accountant)", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    lines += ["", "Baselines on the same held-out windows:", "", "| model | rmse30 | mard30 | clarke_ab30 | rmse60 |",
              "|---|---|---|---|---|"]
    named = dict(base_rows)
    if upper is not None:
        named["centralised non-private (pooled clean data)"] = upper
    for name, m in named.items():
        lines.append(f"| {name} | {_cell(m.get('rmse30'))} | {_cell(m.get('mard30'))} | "
                     f"{_cell(m.get('clarke_ab30'))} | {_cell(m.get('rmse60'))} |")
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    (out / "sweep.json").write_text(json.dumps({"rows": rows, "centralised": upper}, indent=1))
