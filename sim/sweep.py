"""The privacy-utility sweep: device release (design, epsilon per patient-day) x DP-SGD epsilon per patient x
population -> held-out forecast accuracy, with the baselines on the same held-out windows.

Each population (training patients, split over gateways and hospitals as `sim.study` does) is simulated once; its
settings share one held-out set (patients never seen in training, the first `heldout_fit_days` kept for the
per-patient AR). Rows land in `sweep.json` after every setting, so an interrupted sweep resumes where it stopped;
`sweep.csv` (one row per setting and one per baseline), `sweep.md` (the goal table and the grid) and `sweep.html`
(a self-contained frontier plot: inline SVG from matplotlib) are rewritten each time. A study is a simulation
(seeded noise: `federation.privacy_rng.SIMULATION_LABEL`); every epsilon says its unit, delta and accountant.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

from federation.privacy_rng import SIMULATION_LABEL
from sim.evaluate import HeldOut
from sim.executors import Executor, InProcess
from sim.study import DESIGN_LABELS, StudyConfig, baselines, heldout, run_study, training_cohort

POPULATIONS: tuple[int, ...] = (30, 300, 3000)
DEVICE_GRID: tuple[tuple[str, float | None], ...] = (("none", None), ("per-reading", 2304.0), ("per-reading", 8.0))
DP_GRID: tuple[float | None, ...] = (None, 8.0, 4.0, 2.0, 1.0)
DAY_RELEASE_GRID: tuple[float, ...] = (16.0, 8.0, 4.0, 2.0, 1.0)  # epsilon per patient-day, `sim.sweep_day`
SCORES = ("rmse30", "mae30", "mard30", "lag_min30", "clarke_ab30", "parkes_ab30", "hypo_sens30", "alert_sens30",
          "alert_precision30", "alert_false_per_day30", "alert_gain_min30", "alert_level30", "bg_rmse30", "bg_mard30",
          "child_rmse30", "adolescent_rmse30", "adult_rmse30", "rmse60", "bg_rmse60")
COLUMNS = ("kind", "patients", "device_design", "device_epsilon_day", "device_unit", "device_delta", "dp_epsilon",
           "dp_unit", "dp_delta", "accountant", "epsilon_spent_max", *SCORES)
# the goals of issue 15 (mg/dL; fractions; false alerts per patient-day)
GOAL_RMSE30, GOAL_BELOW_PERSISTENCE, GOAL_WORST_GROUP = 13.0, 0.30, 15.0
GOAL_ALERT_SENS, GOAL_DP_WITHIN, GOAL_DP_EPSILON = 0.80, 0.10, 4.0
GOAL_DEVICE_EPSILON, GOAL_DEVICE_WITHIN = 8.0, 0.20  # per patient-day
POOLED = "pooled non-private (centralised, clean)"
DIVERGED = 3.0  # a setting worse than 3x persistence is flagged as giving no useful model


def _cell(v: object) -> str:
    if v is None:
        return "none"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _key(r: dict) -> tuple:
    return (r["kind"], r["patients"], r.get("device_design"), r.get("device_epsilon_day"), r.get("dp_epsilon"),
            r.get("model"))


def settings(populations: Sequence[int], devices: Sequence[tuple[str, float | None]],
             dp_grid: Sequence[float | None]) -> list[tuple[int, str, float | None, float | None]]:
    return [(n, d, e, dp) for n in populations for d, e in devices for dp in dp_grid]


def run_sweep(base: StudyConfig, out: Path, *, populations: Sequence[int] = POPULATIONS,
              devices: Sequence[tuple[str, float | None]] = DEVICE_GRID, dp_grid: Sequence[float | None] = DP_GRID,
              day_release: Sequence[float] = (), progress: Callable[[str, int, int], None] | None = None,
              executor: Executor | None = None) -> list[dict]:
    """Run every (population, device design and epsilon per day, DP epsilon) setting not already in out/sweep.json;
    `progress(message, done, total)` after each. `day_release`: epsilons per patient-day of the daily
    sufficient-statistics release (`sim.sweep_day`, one step per population; empty: not run). The federated settings
    of a population run on `executor` (default in this process; `sim.executors.RayExecutor` for Ray tasks). Returns
    all rows (settings and baselines)."""
    ex = executor or InProcess()
    out.mkdir(parents=True, exist_ok=True)
    rows = _finished(out)
    if rows:  # resuming: only rows of this very configuration (say, not a random start's under --public-pretrain)
        _check_config(out / "sweep.json", json.loads((out / "sweep.json").read_text())["config"], base)
    done = {_key(r) for r in rows}
    todo = settings(populations, devices, dp_grid)
    total = len(todo) + len(populations) * (3 if day_release else 2)
    count = sum(1 for s in todo if ("federated", *s, None) in done) + \
        sum(1 for n in populations if _baseline(rows, n, "persistence")) + \
        sum(1 for n in populations if _baseline(rows, n, POOLED)) + \
        sum(1 for n in populations if day_release and _day_done(rows, n, day_release))
    # order per population: the daily release and the cheap baselines first, then the federated settings, the
    # pooled model last, so a sweep cut short on a busy machine still has the cheap goal rows
    for n in populations:
        mine = [s for s in todo if s[0] == n and ("federated", *s, None) not in done]
        need_base = _baseline(rows, n, "persistence") is None
        need_pooled = _baseline(rows, n, POOLED) is None
        need_day = bool(day_release) and not _day_done(rows, n, day_release)
        if not mine and not need_base and not need_pooled and not need_day:
            continue
        cfg_n = replace(base, patients=n)
        if progress:
            progress(f"{n} patients: simulating the held-out patients", count, total)
        test = heldout(cfg_n)
        if need_day:
            if progress:
                progress(f"{n} patients: daily sufficient-statistics release at {', '.join(map(_cell, day_release))}"
                         " per patient-day", count, total)
            rows = [r for r in rows if not (r["kind"] == "day-release" and r["patients"] == n)]
            rows += _day_rows(cfg_n, test, day_release)
            count += 1
            _write(out, rows, base)
        if not mine and not need_base and not need_pooled:
            continue
        if progress:
            progress(f"{n} patients: simulating the training cohort", count, total)
        cohort = training_cohort(cfg_n)
        if need_base:
            for name, scores in baselines(cfg_n, test=test, cohort=cohort, pooled=False).items():
                rows.append({"kind": "baseline", "model": name, "patients": n, **_scores(scores)})
            count += 1
            _write(out, rows, base)
            if progress:
                progress(f"{n} patients: baselines done", count, total)
        if progress and mine:
            progress(f"{n} patients: {len(mine)} federated settings ({ex.name})", count, total)
        results = ex.map(_setting, mine, cfg_n=cfg_n, test=test, cohort=cohort)  # sim.executors: here or on Ray
        for (_n, design, eps_day, dp), row in zip(mine, results, strict=True):
            rows.append(row)
            count += 1
            _write(out, rows, base)
            if progress:
                progress(f"{n} patients, device {design} {_cell(eps_day)}/day, DP-SGD {_cell(dp)}/patient done",
                         count, total)
        if need_pooled:
            if progress:
                progress(f"{n} patients: the pooled non-private model", count, total)
            scores = baselines(cfg_n, test=test, cohort=cohort, cheap=False)[POOLED]
            rows.append({"kind": "baseline", "model": POOLED, "patients": n, **_scores(scores)})
            count += 1
            _write(out, rows, base)
    _write(out, rows, base)
    if progress:
        progress("done", total, total)
    return rows


def _setting(n: int, design: str, eps_day: float | None, dp: float | None, *, cfg_n: StudyConfig, test: object,
             cohort: object) -> dict:
    """One federated setting's row (a top-level function: Ray pickles it by reference)."""
    cfg = replace(cfg_n, device_design=design, device_epsilon_day=eps_day, dp_epsilon=dp)
    result = run_study(cfg, test=test, cohort=cohort)
    spent = [p["epsilon"] for p in result["privacy"].values()]
    return {"kind": "federated", "model": None, "patients": n, "device_design": design,
            "device_epsilon_day": eps_day, "device_unit": "patient-day" if eps_day else None,
            "dp_epsilon": dp, "dp_unit": "patient" if dp else None,
            "dp_delta": cfg.dp_delta if dp else None, "accountant": cfg.accountant if dp else None,
            "epsilon_spent_max": max(spent) if spent else None, "nodes": result["nodes"],
            "privacy": result["privacy"], "rmse30_per_round": result["rmse30_per_round"],
            **_scores(result["federated"])}


def _day_done(rows: list[dict], n: int, epsilons: Sequence[float]) -> bool:
    have = {r["device_epsilon_day"] for r in rows if r["kind"] == "day-release" and r["patients"] == n}
    return None in have and all(e in have for e in epsilons)


def _day_rows(cfg: StudyConfig, test: HeldOut, epsilons: Sequence[float]) -> list[dict]:
    """The daily sufficient-statistics arm on this population (every patient a device; linear forecaster)."""
    from sim import sweep_day

    held = sweep_day.heldout_cohort(patients=cfg.heldout_patients, seed=cfg.seed, days=sweep_day.whole_days(
        cfg.heldout_fit_days + cfg.heldout_days, "heldout days"))
    scores = sweep_day.day_release_scores(patients=cfg.patients, days=cfg.days, seed=cfg.seed, test=test, held=held,
                                          epsilons=list(epsilons))
    out = []
    for eps, sc in scores.items():
        extra = {"device_delta": sc.pop("device_delta"), "patient_days": sc.pop("patient_days")} if eps else {}
        out.append({"kind": "day-release", "patients": cfg.patients,
                    "model": "linear ridge on daily " + ("releases" if eps else "statistics, no privacy"),
                    "device_design": sweep_day.LABEL if eps else "none", "device_epsilon_day": eps,
                    "dp_epsilon": None, "device_unit": "patient-day" if eps else None, **extra, **_scores(sc)})
    return out


def merge(out: Path, sources: Sequence[Path], base: StudyConfig) -> list[dict]:
    """Add the rows of other sweep directories (e.g. populations run in parallel processes) to out/sweep.json and
    rewrite every output; a row already in out (same setting) is kept, a source run with another config refused."""
    out.mkdir(parents=True, exist_ok=True)
    rows = _finished(out)
    seen = {_key(r) for r in rows}
    for src in sources:
        try:
            doc = json.loads((src / "sweep.json").read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{src / 'sweep.json'}: not a sweep result ({e})") from None
        _check_config(src / "sweep.json", doc.get("config", {}), base)
        for r in doc.get("rows", []):
            if _key(r) not in seen:
                rows.append(r)
                seen.add(_key(r))
    _write(out, rows, base)
    return rows


def _check_config(path: Path, config: dict, base: StudyConfig) -> None:
    """Refuse rows of a sweep run with another configuration than `base` (the population aside)."""
    theirs = {k: v for k, v in config.items() if k != "patients"}
    mine = {k: v for k, v in json.loads(json.dumps(asdict(base), default=str)).items() if k != "patients"}
    if theirs != mine:
        diff = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
        raise ValueError(f"{path}: run with another configuration ({', '.join(diff)})")


def _scores(scores: dict) -> dict:
    return {k: (None if v is None else float(v)) for k, v in scores.items()}


def _finished(out: Path) -> list[dict]:
    try:
        return json.loads((out / "sweep.json").read_text())["rows"]
    except (FileNotFoundError, ValueError, KeyError):
        return []


def _write(out: Path, rows: list[dict], base: StudyConfig) -> None:
    """Rewrite every output from the rows so far (atomically each)."""
    from federation.runtime import atomic_write_text

    atomic_write_text(out / "sweep.json", json.dumps({"config": asdict(base), "simulation": SIMULATION_LABEL,
                                                      "rows": rows}, indent=1, default=str))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(("model", *COLUMNS))
    for r in rows:
        w.writerow([r.get("model") or "federated", *(_cell(r.get(c)) for c in COLUMNS)])
    atomic_write_text(out / "sweep.csv", buf.getvalue())
    atomic_write_text(out / "sweep.md", markdown(rows, base))
    atomic_write_text(out / "sweep.html", html(rows, base))


def _baseline(rows: list[dict], n: int, name: str) -> dict | None:
    return next((r for r in rows if r["kind"] == "baseline" and r["patients"] == n and r["model"] == name), None)


def _fed(rows: list[dict], n: int, design: str = "none", eps_day: float | None = None,
         dp: float | None = None) -> dict | None:
    return next((r for r in rows if r["kind"] == "federated" and r["patients"] == n and r["device_design"] == design
                 and r["device_epsilon_day"] == eps_day and r["dp_epsilon"] == dp), None)


def goals(rows: list[dict]) -> list[tuple[str, str, str, str]]:
    """(goal, target, measured, met?) for the issue's rows that the runs so far can answer."""
    out = []
    pops = sorted({r["patients"] for r in rows})
    for n in pops:
        plain, pers = _fed(rows, n), _baseline(rows, n, "persistence")
        if plain and pers:
            below = 1 - plain["rmse30"] / pers["rmse30"]
            worst = max(plain.get(f"{g}_rmse30") or 0 for g in ("child", "adolescent", "adult"))
            met = plain["rmse30"] <= GOAL_RMSE30 and below >= GOAL_BELOW_PERSISTENCE and worst <= GOAL_WORST_GROUP
            out.append((f"non-private federated RMSE@30 vs CGM, {n} patients",
                        f"<= {GOAL_RMSE30} and >= 30% below persistence, worst age group <= {GOAL_WORST_GROUP}",
                        f"{plain['rmse30']:.2f} ({below:.0%} below persistence {pers['rmse30']:.2f}); worst group "
                        f"{worst:.2f}", "yes" if met else "no"))
            sens, fa = plain.get("alert_sens30"), plain.get("alert_false_per_day30")
            ok = sens is not None and not math.isnan(sens) and sens >= GOAL_ALERT_SENS
            out.append((f"hypo (<70) alerts at +30 min, {n} patients",
                        f"sensitivity >= {GOAL_ALERT_SENS} at <= 1 false alert per patient-day",
                        f"sensitivity {_cell(sens)} at {_cell(fa)} false alerts/patient-day (alert below "
                        f"{_cell(plain.get('alert_level30'))} mg/dL; time gained {_cell(plain.get('alert_gain_min30'))}"
                        f" min; persistence {_cell((pers or {}).get('alert_sens30'))} at "
                        f"{_cell((pers or {}).get('alert_false_per_day30'))})", "yes" if ok else "no"))
        dp = _fed(rows, n, dp=GOAL_DP_EPSILON)
        if plain and dp:
            gap = dp["rmse30"] / plain["rmse30"] - 1
            out.append((f"DP-SGD epsilon {GOAL_DP_EPSILON:g} per patient (delta 1e-5), {n} patients",
                        "RMSE@30 within 10% of non-private",
                        f"{dp['rmse30']:.2f} vs {plain['rmse30']:.2f} ({gap:+.1%})",
                        "yes" if gap <= GOAL_DP_WITHIN else "no"))
        dev = [r for r in rows if r["kind"] == "federated" and r["patients"] == n and r["device_design"] != "none"
               and (r["device_epsilon_day"] or 1e9) <= 8.0 and r["dp_epsilon"] is None]
        for r in dev:
            if plain:
                gap = r["rmse30"] / plain["rmse30"] - 1
                out.append((f"device {r['device_design']} at {_cell(r['device_epsilon_day'])} per patient-day, {n} "
                            "patients", "RMSE@30 within 20% of non-private", f"{r['rmse30']:.2f} ({gap:+.1%})",
                            "yes" if gap <= 0.20 else "no"))
        same = _day(rows, n, None)
        for r in sorted((r for r in rows if r["kind"] == "day-release" and r["patients"] == n
                         and r["device_epsilon_day"] is not None and r["device_epsilon_day"] <= GOAL_DEVICE_EPSILON),
                        key=lambda r: -r["device_epsilon_day"]):
            vs = []
            if same:
                vs.append(f"{r['rmse30'] / same['rmse30'] - 1:+.1%} vs the same linear model without privacy "
                          f"{same['rmse30']:.2f}")
            if plain:
                vs.append(f"{r['rmse30'] / plain['rmse30'] - 1:+.1%} vs the non-private federated MLP "
                          f"{plain['rmse30']:.2f}")
            if pers:
                vs.append(f"persistence {pers['rmse30']:.2f}")
            ref = [x["rmse30"] for x in (same, plain) if x]
            met = bool(ref) and all(r["rmse30"] <= (1 + GOAL_DEVICE_WITHIN) * v for v in ref)
            out.append((f"device daily sufficient-statistics release ({r['device_design']}, gram-gauss) at "
                        f"{_cell(r['device_epsilon_day'])} per patient-day (delta {_cell(r.get('device_delta'))}), "
                        f"{n} devices", "RMSE@30 within 20% of non-private",
                        f"{r['rmse30']:.2f} ({'; '.join(vs)})", "yes" if met else "no"))
    return out


def _day(rows: list[dict], n: int, eps: float | None) -> dict | None:
    return next((r for r in rows if r["kind"] == "day-release" and r["patients"] == n
                 and r["device_epsilon_day"] == eps), None)


def _start(base: StudyConfig) -> str:
    if base.public_pretrain_days <= 0:
        return f"random initial model, {base.dp_epochs} DP-SGD passes a round"
    from sim.public_model import PUBLIC_SUBJECTS

    return (f"initial model trained without privacy on {base.public_pretrain_days:g} days of the {PUBLIC_SUBJECTS} "
            f"published subjects (public data), {base.dp_epochs} DP-SGD passes a round")


def markdown(rows: list[dict], base: StudyConfig) -> str:
    lines = [f"# Privacy-utility sweep ({base.source}, {base.days:g} days per training patient, {base.rounds} rounds;"
             f" patients split over {base.gateways} gateways and {base.hospitals} hospital(s), hospitals "
             f"{base.hospital_share:.0%}; DP-SGD user-level, epsilon per patient cumulative over all rounds at each "
             f"node, delta {base.dp_delta}, {base.accountant} accountant; held-out: {base.heldout_patients} other "
             f"virtual patients x {base.heldout_days:g} days; {_start(base)}; {SIMULATION_LABEL})", "",
             "## Goals (issue 15)", "", "| goal | target | measured | met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in goals(rows)]
    cols = ("patients", "device_design", "device_epsilon_day", "dp_epsilon", "epsilon_spent_max", "rmse30",
            "bg_rmse30", "child_rmse30", "adolescent_rmse30", "adult_rmse30", "mard30", "lag_min30", "clarke_ab30",
            "parkes_ab30", "alert_sens30", "alert_false_per_day30", "alert_gain_min30", "rmse60")
    lines += ["", "## Settings", "", "Device designs: " + "; ".join(f"`{k}`: {v}" for k, v in DESIGN_LABELS.items()),
              "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if r["kind"] == "federated":
            pers = _baseline(rows, r["patients"], "persistence")
            cells = [_cell(r.get(c)) for c in cols]
            if pers and r["rmse30"] is not None and not r["rmse30"] < DIVERGED * pers["rmse30"]:
                cells[cols.index("rmse30")] += " (no useful model: DP noise swamps the few patients per node)"
            lines.append("| " + " | ".join(cells) + " |")
    bcols = ("patients", "model", "rmse30", "bg_rmse30", "child_rmse30", "adolescent_rmse30", "adult_rmse30",
             "mard30", "lag_min30", "alert_sens30", "alert_false_per_day30", "rmse60")
    lines += ["", "## Baselines (same held-out windows)", "", "| " + " | ".join(bcols) + " |",
              "|" + "---|" * len(bcols)]
    for r in rows:
        if r["kind"] == "baseline":
            lines.append("| " + " | ".join(_cell(r.get(c)) for c in bcols) + " |")
    day = [r for r in rows if r["kind"] == "day-release"]
    if day:
        dcols = ("patients", "model", "device_epsilon_day", "device_delta", "rmse30", "bg_rmse30", "child_rmse30",
                 "adolescent_rmse30", "adult_rmse30", "mard30", "alert_sens30", "alert_false_per_day30", "rmse60")
        lines += ["", "## Daily sufficient-statistics release (device LDP per patient-day; linear forecaster)", "",
                  "Every training patient is a device releasing each day's privatised Gram of the forecaster's "
                  "inputs (`gram-gauss`, epsilon per patient-day); nodes fit a ridge forecaster on the sum "
                  "(docs/ldp-release.md). No DP-SGD on top (the release is already private; the fit is "
                  "post-processing).", "", "| " + " | ".join(dcols) + " |", "|" + "---|" * len(dcols)]
        lines += ["| " + " | ".join(_cell(r.get(c)) for c in dcols) + " |" for r in day]
    return "\n".join(lines) + "\n"


def _day_panel(ax: object, rows: list[dict], day: list[dict]) -> None:
    """RMSE@30 of the daily release against device epsilon per patient-day, one line per population, the same model
    without privacy and the non-private federated MLP dashed."""
    for n in sorted({r["patients"] for r in day}):
        pts = sorted((r["device_epsilon_day"], r["rmse30"]) for r in day
                     if r["patients"] == n and r["device_epsilon_day"] is not None)
        line = ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=f"{n} devices")[0]
        for ref, style in ((_day(rows, n, None), "--"), (_fed(rows, n), ":")):
            if ref:
                ax.axhline(ref["rmse30"], linestyle=style, linewidth=0.8, color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("device epsilon per patient-day (gram-gauss, delta 1e-6)")
    ax.set_title("daily release: RMSE@30 (dashed: same model, no privacy; dotted: non-private federated MLP)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def html(rows: list[dict], base: StudyConfig) -> str:
    """A self-contained page: the frontier (RMSE@30 and alert sensitivity against DP epsilon per patient, one line
    per population and device setting, baselines dashed) as inline SVG, then the goal table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    day = [r for r in rows if r["kind"] == "day-release"]
    fig, all_axes = plt.subplots(1, 3 if day else 2, figsize=(18 if day else 12, 4.5))
    axes = all_axes[:2]
    fed = [r for r in rows if r["kind"] == "federated"]
    xs_all = sorted({r["dp_epsilon"] for r in fed if r["dp_epsilon"] is not None})
    x_none = (max(xs_all) * 2) if xs_all else 16.0  # "no DP-SGD" plotted right of the largest epsilon
    for key in sorted({(r["patients"], r["device_design"], r["device_epsilon_day"]) for r in fed},
                      key=lambda k: (k[0], k[1], k[2] or 0)):
        pts = sorted(((r["dp_epsilon"] or x_none), r) for r in fed if (r["patients"], r["device_design"],
                                                                        r["device_epsilon_day"]) == key)
        label = f"{key[0]} patients, device {key[1]}" + (f" {_cell(key[2])}/day" if key[2] else "")
        for ax, metric in zip(axes, ("rmse30", "alert_sens30"), strict=True):
            ax.plot([x for x, _ in pts], [r.get(metric) for _, r in pts], marker="o", label=label)
    for n in sorted({r["patients"] for r in rows}):
        for name, style in (("persistence", ":"), ("pooled non-private (centralised, clean)", "--")):
            b = _baseline(rows, n, name)
            if b:
                axes[0].axhline(b["rmse30"], linestyle=style, linewidth=0.8, color="grey")
                axes[0].annotate(f"{name.split(' (')[0]} ({n})", (x_none, b["rmse30"]), fontsize=7, color="grey")
    pers = [b["rmse30"] for b in rows if b["kind"] == "baseline" and b["model"] == "persistence"]
    if pers:  # a diverged setting (tiny populations under strong DP) would flatten the rest: it sits at the top
        axes[0].set_ylim(top=2 * max(pers))
    for ax, title in zip(axes, ("RMSE@30 vs CGM (mg/dL, lower is better)",
                                "hypo alert sensitivity at <= 1 false alert/day"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("DP-SGD epsilon per patient (delta 1e-5); rightmost: no DP-SGD")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if day:
        _day_panel(all_axes[2], rows, day)
    svg = io.StringIO()
    fig.savefig(svg, format="svg", bbox_inches="tight")
    plt.close(fig)
    table = "".join(f"<tr><td>{a}</td><td>{b}</td><td>{c}</td><td>{d}</td></tr>" for a, b, c, d in goals(rows))
    md = base64.b64encode(markdown(rows, base).encode()).decode()
    return ("<!doctype html><html><head><meta charset='utf-8'><title>wearfed privacy-utility sweep</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px}"
            "table{border-collapse:collapse}</style></head><body>"
            f"<h1>Privacy-utility frontier</h1><p>{SIMULATION_LABEL}</p>{svg.getvalue()}"
            "<h2>Goals (issue 15)</h2><table><tr><th>goal</th><th>target</th><th>measured</th><th>met</th></tr>"
            f"{table}</table><p><a download='sweep.md' href='data:text/markdown;base64,{md}'>the full table "
            "(markdown)</a></p></body></html>")
