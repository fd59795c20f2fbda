"""Fairness gates: a candidate's worst age group and the spread between groups, per metric source.

Bakare 2020 (privacy-first MLOps) promotes a model "only after automated evaluations against privacy, fairness, and
accuracy benchmarks"; here fairness is parity of forecast quality across the UVA/Padova age groups (children,
adolescents, adults). A source carries per-group figures as ``child_rmse30``, ``child_hypo_sens30``,
``child_hypo_events30`` (`federation.evaluation.score_windows` with groups; `sim.evaluate` posts the RMSE ones).

    [fairness]
    worst_group_rmse30_max_mgdl = 40.0   # RMSE@30 of the worst age group
    group_rmse30_gap_max_mgdl = 15.0     # worst minus best group's RMSE@30
    worst_group_hypo_sens30_min = 0.1    # hypo sensitivity@30 of the worst group: its 95 % upper bound
    group_hypo_sens30_gap_max = 0.8      # best minus worst group's hypo sensitivity@30: its 95 % lower bound
    min_group_hypo_events = 10           # a group's hypo sensitivity gates only over at least this many hypo windows
    require = ["validation"]             # sources that, when they report, must carry RMSE@30 of every group
    sources = ["validation"]             # sources whose per-group figures the gates judge

Hypo sensitivity of a group rests on few hypo windows (a demo's adolescents: 11), so its gates refuse only what the
evidence shows: the worst group fails when the upper end of its 95 % Wilson interval is below the floor, the gap
when the best group's lower end minus the worst group's upper end exceeds the limit. Windows of one hypo event are
correlated, so the interval is, if anything, too narrow (the gate errs towards refusing).

Each check returns ``(gate, passed, detail)``; `cloud.gates` wraps them as results named ``fairness gate ...``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from federation.errors import ConfigError
from federation.evaluation import AGE_GROUPS, SOURCES, group_key

GATES = ("group_figures_present", "worst_group_rmse30", "group_rmse30_gap", "worst_group_hypo_sens30",
         "group_hypo_sens30_gap")
KEYS = {"worst_group_rmse30_max_mgdl": (0.0, 1000.0), "group_rmse30_gap_max_mgdl": (0.0, 1000.0),
        "worst_group_hypo_sens30_min": (0.0, 1.0), "group_hypo_sens30_gap_max": (0.0, 1.0),
        "min_group_hypo_events": (1.0, 1e6)}
PLURAL = {"child": "children", "adolescent": "adolescents", "adult": "adults"}
WILSON_Z = 1.959964  # two-sided 95 %


@dataclass(frozen=True)
class FairnessConfig:
    worst_group_rmse30_max_mgdl: float | None = None
    group_rmse30_gap_max_mgdl: float | None = None
    worst_group_hypo_sens30_min: float | None = None
    group_hypo_sens30_gap_max: float | None = None
    min_group_hypo_events: float = 10.0
    require: tuple[str, ...] = ()
    sources: tuple[str, ...] = SOURCES


def name_list(value: object, allowed: tuple[str, ...], *, what: str) -> tuple[str, ...]:
    """A gates-file list of names (`what` says where, e.g. "gates: [fairness] sources"), each one of `allowed`."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{what} must be a list of strings, got {value!r}")
    bad = [v for v in value if v not in allowed]
    if bad:
        raise ConfigError(f"{what} has unknown {bad}; allowed: {list(allowed)}")
    return tuple(value)


def parse(body: dict, *, where: str) -> FairnessConfig:
    """The [fairness] table (keys already checked against `KEYS` and ``require`` by the caller's schema)."""
    kw: dict = {}
    for key, (lo, hi) in KEYS.items():
        if key not in body:
            continue
        v = body[key]
        if v is False and key != "min_group_hypo_events":
            kw[key] = None
            continue
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(f"{where}: [fairness] {key} must be a number (or false to disable), got {v!r}")
        if not lo <= float(v) <= hi:
            raise ConfigError(f"{where}: [fairness] {key} = {v} is outside [{lo}, {hi}]")
        kw[key] = float(v)
    for key in ("require", "sources"):
        if key in body:
            kw[key] = name_list(body[key], SOURCES, what=f"{where}: [fairness] {key}")
    return FairnessConfig(**kw)


def wilson(p: float, n: float, *, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval of a proportion `p` observed over `n` trials (E. B. Wilson, "Probable inference,
    the law of succession, and statistical inference", JASA 22:209-212, 1927)."""
    if n <= 0:
        return 0.0, 1.0
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _per_group(m: dict[str, float], metric: str, *, min_events: float | None = None) -> dict[str, float]:
    out = {}
    for g in AGE_GROUPS:
        v = m.get(group_key(g, metric))
        if v is None or v != v:  # absent or NaN: not measured for this group
            continue
        if min_events is not None and m.get(group_key(g, "hypo_events30"), 0.0) < min_events:
            continue
        out[g] = float(v)
    return out


def _listing(vals: dict[str, float], fmt: str) -> str:
    return ", ".join(f"{PLURAL[g]} {format(v, fmt)}" for g, v in vals.items())


def check(cfg: FairnessConfig, source: str, m: dict[str, float]) -> list[tuple[str, bool, str]]:
    """Every fairness gate on one source's metrics; a source without per-group figures is only checked for their
    presence (when `cfg.require` names it)."""
    out: list[tuple[str, bool, str]] = []
    rmse = _per_group(m, "rmse30")
    if source in cfg.require:
        missing = [PLURAL[g] for g in AGE_GROUPS if g not in rmse]
        out.append(("group_figures_present", not missing,
                    f"rmse30 missing for {', '.join(missing)}" if missing else "rmse30 of every age group present"))
    if source not in cfg.sources:
        return out
    if rmse and cfg.worst_group_rmse30_max_mgdl is not None:
        g = max(rmse, key=rmse.__getitem__)
        ok = rmse[g] <= cfg.worst_group_rmse30_max_mgdl
        out.append(("worst_group_rmse30", ok, f"{PLURAL[g]} {rmse[g]:.1f} {'within' if ok else 'above'} "
                    f"{cfg.worst_group_rmse30_max_mgdl:.1f} mg/dL ({_listing(rmse, '.1f')})"))
    if len(rmse) >= 2 and cfg.group_rmse30_gap_max_mgdl is not None:
        hi, lo = max(rmse, key=rmse.__getitem__), min(rmse, key=rmse.__getitem__)
        gap = rmse[hi] - rmse[lo]
        ok = gap <= cfg.group_rmse30_gap_max_mgdl
        out.append(("group_rmse30_gap", ok, f"{PLURAL[hi]} minus {PLURAL[lo]} {gap:.1f} "
                    f"{'within' if ok else 'above'} {cfg.group_rmse30_gap_max_mgdl:.1f} mg/dL"))
    sens = _per_group(m, "hypo_sens30", min_events=cfg.min_group_hypo_events)
    events = {g: m[group_key(g, "hypo_events30")] for g in sens}
    few = [PLURAL[g] for g in AGE_GROUPS if group_key(g, "hypo_events30") in m and g not in sens]
    note = f"; {', '.join(few)} under {cfg.min_group_hypo_events:g} hypo windows, not gated" if few else ""
    if sens and cfg.worst_group_hypo_sens30_min is not None:
        # refuse only when the evidence says so: the worst group's 95 % upper bound is below the floor
        g = min(sens, key=sens.__getitem__)
        _, up = wilson(sens[g], events[g])
        ok = up >= cfg.worst_group_hypo_sens30_min
        out.append(("worst_group_hypo_sens30", ok, f"{PLURAL[g]} {sens[g]:.2f} (95 % upper bound {up:.2f}, "
                    f"{events[g]:g} hypo windows) {'within' if ok else 'below'} {cfg.worst_group_hypo_sens30_min:.2f} "
                    f"({_listing(sens, '.2f')}{note})"))
    if len(sens) >= 2 and cfg.group_hypo_sens30_gap_max is not None:
        hi, lo = max(sens, key=sens.__getitem__), min(sens, key=sens.__getitem__)
        gap = wilson(sens[hi], events[hi])[0] - wilson(sens[lo], events[lo])[1]
        ok = gap <= cfg.group_hypo_sens30_gap_max
        out.append(("group_hypo_sens30_gap", ok, f"{PLURAL[hi]} minus {PLURAL[lo]} {sens[hi] - sens[lo]:.2f}, at "
                    f"least {gap:.2f} at 95 % {'within' if ok else 'above'} {cfg.group_hypo_sens30_gap_max:.2f}{note}"))
    return out
