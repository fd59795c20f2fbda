"""A self-contained `report.html` from a run's summary: the answers first, then tables and plots; opens offline.

Every plot is a PNG drawn with matplotlib's Agg canvas (no display, no pyplot state) and embedded as a
base64 `data:` URI; the page has inline CSS only, so nothing is fetched from anywhere. The first screen
(`sim/report_answers.py`) answers did it work, how private, how accurate, what was held back and why. Sections
below it and the summary keys they read (all but `rounds` optional; a missing section is replaced by a note, a
malformed one by a note with the error, never an exception):

- forecast error per round: `rounds[i]["rmse30"|"rmse60"]`, baselines `rounds[i]["<name>_rmse30"]` for
  name in persistence, linear, centralised, or flat lines from `summary["baselines"][name]["rmse30"]`, the untrained
  model from `summary["initial_model"]`; axes from 0;
- Clarke and Parkes (type 1) error grids: `summary["clarke_points"] = {"reference": [...], "prediction": [...],
  "horizon_min", "model_version", "round", "reference_kind"}` (mg/dL);
- epsilon spent per participant: `rounds[i]["epsilon"][participant] = {"value", "delta", "unit", "accountant"}`;
- bytes and latency per round: `rounds[i]["bytes_up"]`, `rounds[i]["seconds"]`;
- device fleet health: `summary["fleet_timeline"] = [{"t", "connected", "buffered", "dropped", "battery"}, ...]`,
  `t` in simulated hours since `summary["sim_start"]` (a unix time is converted), battery a fraction 0..1;
- fault timeline: `summary["faults"] = [{"t", "kind", "target", "detail"}, ...]`, `t` as above;
- release checks, drift, scale when present; every round's scalar figures (folded, readable column names).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from federation.error_grids import ZONES, clarke_zones, parkes_t1_lines, parkes_zones, zone_fractions
from sim import report_explanations
from sim.outcomes import outcome
from sim.report_answers import first_screen
from sim.report_labels import column_label
from sim.summary import RunSummary

BASELINES = ("persistence", "linear", "centralised")
FLEET_COUNTS = ("connected", "buffered", "dropped")
_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1400px;margin:.6em auto;padding:0 1em;
color:#222;font-size:14px;line-height:1.35}
h1{font-size:1.35em;margin:.2em 0}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
h3{font-size:1em}
table{border-collapse:collapse;margin:.4em 0;font-size:.92em}td,th{border:1px solid #ddd;padding:.2em .5em;
text-align:right;vertical-align:top}th{background:#f4f4f4}td.l,th.l{text-align:left}
.scroll{overflow-x:auto}.note{color:#666;font-style:italic}.warn{color:#a15c00;font-weight:bold}
img{max-width:100%;height:auto}
#first-screen .cards{display:grid;grid-template-columns:1fr 1.25fr 1.1fr;gap:.7em}
#first-screen .card{border:1px solid #ccd;border-radius:6px;padding:.3em .8em;background:#fbfbfd}
#first-screen .card h2{margin:.2em 0 .3em;font-size:1.05em;border:none}
#first-screen .card.wide{margin-top:.7em}#first-screen ul{margin:.2em 0;padding-left:1.1em}
#first-screen li{margin:.15em 0}#first-screen p{margin:.3em 0}
.verdict{font-weight:bold;font-size:1.05em}.good{color:#1a6b2a}.bad{color:#a12b00}
.small{font-size:.88em;color:#444}.dim{color:#777}.params{font-size:.9em;margin:.2em 0 .6em}
table.rounds{width:100%}table.rounds td.why{max-width:38em}table.mini{margin:.2em 0}
summary{cursor:pointer;font-weight:bold;margin:1em 0 .4em}
"""


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _e(value: object) -> str:
    return html.escape(str(value))


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _small(text: str) -> str:
    return f'<p class="small">{_e(text)}</p>'


def _num(value: object) -> float:
    """A finite float, or NaN for None / missing (plots leave a gap)."""
    if value is None or isinstance(value, bool):
        return math.nan
    return float(value)  # type: ignore[arg-type]


def _is_number(text: object) -> bool:
    try:
        float(str(text))
    except ValueError:
        return False
    return True


def _table(header: list[str], rows: list[list[object]]) -> str:
    """A table; the first column and text cells left-aligned, numbers right-aligned."""
    head = "".join(f'<th class="l">{_e(h)}</th>' if i == 0 else f"<th>{_e(h)}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" if i and _is_number(c) else f'<td class="l">{_e(c)}</td>'
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def _sim_hours(summary: dict, t: object) -> float:
    """A timeline entry's `t` as simulated hours since the run's start. The replay records hours since its
    simulated start (`t` below 1e6); a unix time (seconds) is converted against `summary['sim_start']`, or the
    earliest entry when that is absent."""
    value = _num(t)
    if math.isnan(value) or abs(value) < 1e6:
        return value
    start = summary.get("sim_start")
    if not isinstance(start, int | float) or isinstance(start, bool):
        start = _unix_origin(summary)
    return (value - float(start)) / 3600.0


def _unix_origin(summary: dict) -> float:
    ts = [_num(p.get("t")) for key in ("fleet_timeline", "faults") for p in (summary.get(key) or [])
          if isinstance(p, dict)]
    ts = [t for t in ts if not math.isnan(t) and t >= 1e6]
    if not ts:
        raise ValueError("no timeline entry has a numeric t")
    return min(ts)


def _hours_label(summary: dict) -> str:
    start = summary.get("sim_start")
    if isinstance(start, int | float) and not isinstance(start, bool):
        return f"simulated hours since {datetime.fromtimestamp(start, UTC):%Y-%m-%d %H:%M} UTC"
    return "simulated hours since the start of the run"


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


# ------------------------------------------------------------------ sections


def _rounds(summary: dict) -> list[dict]:
    rounds = summary.get("rounds") or []
    if not isinstance(rounds, list):
        raise TypeError(f"summary['rounds'] is a {type(rounds).__name__}, not a list")
    return [r for r in rounds if isinstance(r, dict)]


def _model_label(r: dict) -> str:
    return f"v{r['model_version']}" if r.get("model_version") is not None else "no model"


def _section_rmse(summary: dict) -> str:
    rounds = _rounds(summary)
    if not rounds:
        return _note("No rounds in this summary.")
    x = [r.get("round", i + 1) for i, r in enumerate(rounds)]
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    flat = summary.get("baselines") if isinstance(summary.get("baselines"), dict) else {}
    init = summary.get("initial_model") if isinstance(summary.get("initial_model"), dict) else {}
    for ax, h in zip(axes, (30, 60), strict=True):
        ax.plot(x, [_num(r.get(f"rmse{h}")) for r in rounds], "o-", color="C0", label="federated model")
        for k, name in enumerate(BASELINES):
            ys = [_num(r.get(f"{name}_rmse{h}")) for r in rounds]
            if not all(math.isnan(y) for y in ys):
                ax.plot(x, ys, "s--", color=f"C{k + 1}", label=name)
            elif isinstance(flat.get(name), dict) and flat[name].get(f"rmse{h}") is not None:
                ax.axhline(_num(flat[name][f"rmse{h}"]), ls="--", color=f"C{k + 1}", label=name)
        if init.get(f"rmse{h}") is not None:
            ax.axhline(_num(init[f"rmse{h}"]), ls=":", color="grey", label="untrained model v0")
        # a round "completed" when it produced a model (later states: evaluated, staged, promoted, rejected)
        failed = [xi for xi, r in zip(x, rounds, strict=True)
                  if r.get("model_version") is None and r.get("state") != "completed"]
        for xi in failed:
            ax.axvline(xi, color="red", alpha=0.3, lw=6)
        held = [(xi, r) for xi, r in zip(x, rounds, strict=True) if r.get("model_version") is not None
                and outcome(r) != "promoted"]
        for xi, r in held:
            ax.plot([xi], [_num(r.get(f"rmse{h}"))], "o", ms=11, mfc="none", mec="red", mew=1.5)
        ax.set_title(f"held-out RMSE at +{h} min" + (" (red band: round without a model)" if failed else ""),
                     fontsize=10)
        ax.set_xlabel("round")
        ax.set_ylabel("RMSE (mg/dL, axis from 0)")
        ax.set_ylim(bottom=0)  # an axis from 0: gaps between lines are not exaggerated
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
    if any(outcome(r) != "promoted" and r.get("model_version") is not None for r in rounds):
        axes[0].plot([], [], "o", ms=11, mfc="none", mec="red", mew=1.5, label="held back by a gate")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=6, fontsize=8)
    return _png(fig) + _small("Scored on the held-out virtual patients' CGM; persistence carries the last reading "
                              "forward. Every round's figures are in the full table at the end.")


def _grid_subject(summary: dict, pts: dict) -> str:
    """Which model, round and horizon the grids show, in words."""
    version, rnd = pts.get("model_version"), pts.get("round")
    rows = {r.get("round"): r for r in _rounds(summary)}
    status = f", {outcome(rows[rnd])}" if rnd in rows else ""
    model = (f"model v{version} (round {rnd}{status})" if version is not None
             else "the newest model (version not recorded)")
    horizon = pts.get("horizon_min", 30)
    ref = pts.get("reference_kind", "reference glucose")
    return f"{model}, +{horizon} min forecasts against {ref}"


def _draw_clarke(ax, ref: np.ndarray, pred: np.ndarray) -> None:  # noqa: ANN001 - a matplotlib Axes
    top = 400.0
    lines = [  # Clarke et al. 1987 zone lines, as in federation.error_grids
        ([0, top], [0, top]), ([0, 175 / 3], [70, 70]), ([175 / 3, top / 1.2], [70, top]), ([70, 70], [84, top]),
        ([0, 70], [180, 180]), ([70, 290], [180, top]), ([70, 70], [0, 56]), ([70, top], [56, 320]),
        ([180, 180], [0, 70]), ([180, top], [70, 70]), ([240, 240], [70, 180]), ([240, top], [180, 180]),
        ([130, 180], [0, 70]),
    ]
    ax.scatter(ref, pred, s=4, alpha=0.4, color="C0", edgecolors="none")
    for xs, ys in lines:
        ax.plot(xs, ys, color="k", lw=0.8)
    for z, tx, ty in (("A", 30, 15), ("B", 370, 260), ("B", 280, 370), ("C", 160, 370), ("C", 160, 15),
                      ("D", 30, 140), ("D", 370, 120), ("E", 30, 370), ("E", 370, 15)):
        ax.text(tx, ty, z, fontsize=14, fontweight="bold", alpha=0.6)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)


def _draw_parkes(ax, ref: np.ndarray, pred: np.ndarray) -> None:  # noqa: ANN001 - a matplotlib Axes
    top = 550.0
    ax.scatter(ref, pred, s=4, alpha=0.4, color="C0", edgecolors="none")
    ax.plot([0, top], [0, top], color="k", lw=0.5, ls=":")
    for _letter, xs, ys in parkes_t1_lines():
        ax.plot(xs, ys, color="k", lw=0.8)
    for z, tx, ty in (("A", 330, 345), ("B", 235, 370), ("B", 400, 255), ("C", 130, 400), ("C", 440, 160),
                      ("D", 60, 400), ("D", 480, 60), ("E", 10, 480)):
        ax.text(tx, ty, z, fontsize=14, fontweight="bold", alpha=0.6)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)


def _section_clarke(summary: dict) -> str:
    pts = summary.get("clarke_points")
    if not pts:
        return _note("No error-grid points in this summary (summary['clarke_points'] absent).")
    ref = np.asarray(pts["reference"], dtype=np.float64)
    pred = np.asarray(pts["prediction"], dtype=np.float64)
    clarke = zone_fractions(clarke_zones(ref, pred))
    parkes = zone_fractions(parkes_zones(ref, pred))
    subject = _grid_subject(summary, pts)
    fig = Figure(figsize=(11, 5.6), layout="constrained")
    a1, a2 = fig.subplots(1, 2)
    _draw_clarke(a1, ref, pred)
    _draw_parkes(a2, ref, pred)
    for ax, name in ((a1, "Clarke error grid"), (a2, "Parkes (consensus) error grid, type 1")):
        ax.set_aspect("equal")
        ax.set_xlabel("reference glucose (mg/dL)")
        ax.set_ylabel(f"predicted glucose at +{pts.get('horizon_min', 30)} min (mg/dL)")
        ax.set_title(name, fontsize=10)
    fig.suptitle(f"{subject}: {len(ref)} pairs", fontsize=10)
    table = _table(["grid", *ZONES, "A+B"],
                   [[name, *(f"{100 * f[z]:.1f}%" for z in ZONES), f"{100 * f['AB']:.1f}%"]
                    for name, f in (("Clarke", clarke), ("Parkes type 1", parkes))])
    clipped = int(np.sum((ref > 400) | (pred > 400)))
    note = _note(f"{clipped} pairs above 400 mg/dL lie outside the Clarke plot (still counted).") if clipped else ""
    sources = ("<p class=\"small\">Shown: " + _e(subject) + ". Zone lines: Clarke et al., Diabetes Care 10(5):622-628, "
               "1987; Parkes et al., Diabetes Care 23(8):1143-1148, 2000, with the type 1 vertex coordinates of "
               "Pfützner et al., J Diabetes Sci Technol 7(5):1275-1281, 2013 (federation/error_grids.py). "
               "ISO 15197:2013 asks 99% of a meter's readings in Parkes A+B.</p>")
    return sources + _png(fig) + table + note


def _section_epsilon(summary: dict) -> str:
    rounds = [r for r in _rounds(summary) if isinstance(r.get("epsilon"), dict) and r["epsilon"]]
    if not rounds:
        return _note("No epsilon in this summary's rounds.")
    participants = sorted({p for r in rounds for p in r["epsilon"]})
    fig = Figure(figsize=(9, 3.8), layout="constrained")
    ax = fig.subplots()
    labels = set()
    for k, p in enumerate(participants):
        xs = [r.get("round") for r in rounds if p in r["epsilon"]]
        ys = [_num(r["epsilon"][p].get("value")) for r in rounds if p in r["epsilon"]]
        ax.plot(xs, ys, "o-", color=f"C{k % 10}", label=p)
        for r in rounds:
            e = r["epsilon"].get(p)
            if e:
                labels.add((e.get("unit"), e.get("delta"), e.get("accountant")))
    cap = (summary.get("config") or {}).get("epsilon_cap")
    if cap is not None:
        ax.axhline(float(cap), color="red", ls=":", label=f"cap {cap}")
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative DP-SGD epsilon (axis from 0)")
    ax.set_ylim(bottom=0)
    units = "; ".join(f"per {u}, delta {d:g}, {a} accountant" if isinstance(d, int | float) else f"per {u}, {a}"
                      for u, d, a in sorted(labels, key=str))
    ax.set_title(f"DP-SGD epsilon spent ({units})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.set_xticks(sorted({r.get("round") for r in rounds}))
    same = len({tuple(_num(r["epsilon"][p].get("value")) for r in rounds if p in r["epsilon"])
                for p in participants}) < len(participants)
    fig.legend(loc="outside right upper", fontsize=8, title="lines overlap: equal spend" if same else None,
               title_fontsize=7)
    rows = [[p, *(_fmt(r["epsilon"][p].get("value")) if p in r["epsilon"] else "" for r in rounds)]
            for p in participants]
    return _png(fig) + _table(["participant", *(f"after round {r.get('round')}" for r in rounds)], rows) + \
        f"<p>Unit of privacy and accountant: {_e(units)}. Cumulative: one accountant per node over every round " \
        "it trained in, so the last column is the whole training run's epsilon (not a sum of rounds).</p>"


def _section_traffic(summary: dict) -> str:
    rounds = [r for r in _rounds(summary) if "bytes_up" in r or "seconds" in r]
    if not rounds:
        return _note("No bytes or round times in this summary's rounds.")
    x = [r.get("round") for r in rounds]
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    a1, a2 = fig.subplots(1, 2)
    a1.bar(x, [_num(r.get("bytes_up")) / 1e6 for r in rounds], color="C0")
    a1.set_title("bytes uploaded per round")
    a1.set_ylabel("MB")
    a2.plot(x, [_num(r.get("seconds")) for r in rounds], "o-", color="C1")
    a2.set_title("round latency (open to close)")
    a2.set_ylabel("seconds (axis from 0)")
    a2.set_ylim(bottom=0)
    for ax in (a1, a2):
        ax.set_xlabel("round")
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
    return _png(fig)


def _section_fleet(summary: dict) -> str:
    timeline = summary.get("fleet_timeline")
    if not timeline:
        return _note("No device fleet timeline in this summary (summary['fleet_timeline'] absent).")
    if any("t" not in p for p in timeline):
        raise ValueError("a fleet timeline entry has no t")
    hours = np.array([_sim_hours(summary, p["t"]) for p in timeline])
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    a1, a2 = fig.subplots(1, 2)
    words = {"connected": "streaming (not yet done)", "buffered": "readings buffered on devices",
             "dropped": "readings dropped (buffer full)"}
    for k, key in enumerate(FLEET_COUNTS):
        if any(key in p for p in timeline):
            a1.plot(hours, [_num(p.get(key)) for p in timeline], color=f"C{k}", label=words[key])
    a1.set_title("devices and their buffers", fontsize=10)
    a1.set_ylabel("count (devices or readings)")
    a1.legend(fontsize=8, loc="best")
    batteries = [_num(p.get("battery")) for p in timeline]
    if not all(math.isnan(b) for b in batteries):
        # fleets report the lowest battery left as a fraction of capacity (device/publisher.py DeviceStats.battery);
        # older summaries that already carry percent are drawn as they are
        scale = 100.0 if np.nanmax(batteries) <= 1.0 else 1.0
        a2.plot(hours, [b * scale for b in batteries], color="C3")
        a2.set_ylim(0, 105)
        a2.set_title("lowest battery in the fleet", fontsize=10)
        a2.set_ylabel("% of capacity left")
    else:
        a2.text(0.5, 0.5, "no battery-powered device reported a level", ha="center", transform=a2.transAxes)
    for ax in (a1, a2):
        ax.set_xlabel(_hours_label(summary))
        ax.grid(alpha=0.3)
    span = np.nanmax(hours) - np.nanmin(hours) if len(hours) else 0.0
    return _png(fig) + _small(f"{len(timeline)} samples over {span:.1f} simulated hours (the clock keeps running "
                              "through the rounds and the release checks after the devices' last day).")


def _section_faults(summary: dict) -> str:
    faults = summary.get("faults")
    if not faults:
        return _note("No faults were injected in this run (summary['faults'] absent or empty).")
    kinds = sorted({str(f.get("kind")) for f in faults})
    hours = [_sim_hours(summary, f.get("t")) for f in faults]
    fig = Figure(figsize=(10, 1.0 + 0.45 * len(kinds)), layout="constrained")
    ax = fig.subplots()
    for f, h in zip(faults, hours, strict=True):
        y = kinds.index(str(f.get("kind")))
        ax.plot([h], [y], "D", color=f"C{y % 10}")
        ax.annotate(str(f.get("target", "")), (h, y), xytext=(4, 4), textcoords="offset points", fontsize=7)
    ax.set_yticks(range(len(kinds)), kinds)
    ax.set_ylim(-0.7, len(kinds) - 0.3)
    ax.set_xlabel(_hours_label(summary))
    ax.grid(alpha=0.3, axis="x")
    rows = [[f"{h:.2f}", f.get("kind", ""), f.get("target", ""), f.get("detail", "")]
            for f, h in zip(faults, hours, strict=True)]
    return _png(fig) + _table(["simulated hour", "kind", "target", "detail"], rows)


def _section_overview(summary: dict) -> str:
    parts = []
    facts = [[k, _fmt(v)] for k, v in summary.items() if isinstance(v, int | float | str)]
    if facts:
        parts.append(_table(["", "value"], facts))
    for key, value in summary.items():
        if key in ("rounds", "clarke_points", "fleet_timeline", "faults", "baselines") or not isinstance(value, dict):
            continue
        scalars = [[k, _fmt(v)] for k, v in value.items() if isinstance(v, int | float | str | bool | None)]
        if scalars:
            parts.append(f"<h3>{_e(key)}</h3>" + _table(["", "value"], scalars))
    return "".join(parts)


def _cell(v: object) -> str:
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_fmt(x) if not isinstance(x, dict) else '{...}'}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v if not isinstance(x, dict | list))
    return _fmt(v)


def _section_round_table(summary: dict) -> str:
    """Every figure of every round, one row per round, readable column names with units."""
    rounds = _rounds(summary)
    if not rounds:
        return _note("No rounds in this summary.")
    first = ["round", "state", "model_version", "model_status", "rmse30", "persistence_rmse30", "rmse60",
             "persistence_rmse60", "gates_failed", "failure_reason", "bytes_up", "seconds"]
    cols = [c for c in first if any(c in r for r in rounds)]
    cols += sorted({k for r in rounds for k, v in r.items()
                    if k not in cols and isinstance(v, int | float | str) and k != "model_hash"})
    body = "".join("<tr>" + "".join(
        f'<td class="l">{_e(_cell(r.get(c)))}</td>' if not _is_number(_cell(r.get(c))) else
        f"<td>{_e(_cell(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rounds)
    head = "".join(f'<th title="{_e(c)}">{_e(column_label(c))}</th>' for c in cols)
    return (f'<details id="all-rounds"><summary>All {len(cols)} figures of each round (click to open; column '
            f"names with units, raw summary.json key on hover)</summary><div class=\"scroll\"><table>"
            f"<tr>{head}</tr>{body}</table></div></details>")


def _section_release(summary: dict) -> str:
    r = summary["release_checks"]
    if "skipped" in r:
        return _note(f"Skipped: {r['skipped']}")
    rows = [["promoted model v" + str(r["promoted"]["version"]) + " loaded", r["promoted"]["reached_all"],
             r["promoted"]["seconds"], ", ".join(r["promoted"]["missing"])],
            [f"{r['tampered']['kind']} release refused", r["tampered"]["refused_by_all"], r["tampered"]["seconds"],
             ", ".join(r["tampered"]["accepted_by"])]]
    if "skipped" in r.get("rollback", {}):
        rows.append(["rollback", "skipped", "", r["rollback"]["skipped"]])
    elif "rollback" in r:
        b = r["rollback"]
        rows.append([f"rollback v{b['from']} -> v{b['to']} loaded", b["reached_all"], b["seconds"],
                     ", ".join(b["missing"])])
    return (_note(f"{r['devices']} inference-capable devices behind {', '.join(r['gateways'])}.")
            + _table(["check", "all devices", "seconds", "devices that did not"], rows))


def _section_drift(summary: dict) -> str:
    status, alerts = summary["drift"]["status"], summary["drift"]["alerts"]
    alerted = {a["participant"] for a in alerts}
    min_h, min_n = status.get("min_reference_hours"), status.get("min_readings")

    def latest(d: dict) -> str:
        if d.get("kl_nats") is not None:
            return _fmt(d["kl_nats"])
        if d.get("scored_kl_nats") is not None:
            return f"{_fmt(d['scored_kl_nats'])} (an earlier report)"
        if not any(outcome(r) == "promoted" for r in _rounds(summary)):
            return "not scored: no model was promoted, nothing to compare against"
        if min_n is not None and (d.get("readings") or 0) < min_n:
            return f"not scored: {d.get('readings')} readings < {min_n}"
        return f"not scored: the production model's training data covers < {_fmt(min_h)} h of readings"

    rows = [[p, d.get("reports"), d.get("scored_reports", ""), latest(d), d.get("readings"),
             "yes" if p in alerted else "no"] for p, d in sorted(status.get("participants", {}).items())]
    note = _note(f"KL divergence (nats) of each gateway's recent privatised readings from the production model's "
                 f"training data; alert above {status.get('threshold_nats')} nats; a report is scored once that "
                 f"data covers {min_h} h of readings and the report holds {min_n} readings. {len(alerts)} alert(s).")
    return note + (_table(["participant", "reports", "scored", "latest KL (nats)", "readings in latest", "alerted"],
                          rows) if rows else _note("No drift report was received."))


def _section_scale(summary: dict) -> str:
    scale, runs = summary["scale"], summary.get("runs") or {}
    rows, fig = [], Figure(figsize=(7, 3.2))
    ax = fig.subplots()
    regions = scale.get("regions")
    paths = [("", "", "direct")] + ([("_regions", f"-regions{regions}", f"{regions} regions")] if regions else [])
    for suffix, run_suffix, label in paths:
        for n in scale["participants"]:
            per_round = [r.get("round_seconds") for r in runs.get(f"{n}{run_suffix}", {}).get("rounds", [])]
            rows.append([n, label, _fmt(scale.get(f"round_seconds_{n}{suffix}")),
                         ", ".join(_fmt(t) for t in per_round), _fmt(scale.get(f"cloud_cpu_seconds_{n}{suffix}")),
                         _fmt(scale.get(f"region_relays_cpu_seconds_{n}{suffix}")),
                         _fmt(scale.get(f"participants_cpu_seconds_{n}{suffix}"))])
            ax.plot(range(1, len(per_round) + 1), [_num(t) for t in per_round], marker="o",
                    linestyle="--" if suffix else "-", label=f"{n} participants, {label}")
    ax.set_xlabel("round")
    ax.set_ylabel("round wall time (s)")
    ax.legend()
    shown = {label: scale.get(f"ratio{suffix}") for suffix, _run, label in paths}
    ratios = "; ".join(f"{label}: {'n/a' if r is None else f'{r:.2f}x'}" for label, r in shown.items())
    note = _note(f"Median round time at {max(scale['participants'])} participants over "
                 f"{min(scale['participants'])}: {ratios}. Every count trains on the same {scale.get('patients')} "
                 "clinical patients.")
    return note + _png(fig) + _table(["participants", "path", "median round s", "round seconds",
                                      "cloud CPU s per round", "region relays' CPU s", "participants' CPU s"], rows)


SECTIONS: tuple[tuple[str, Callable[[dict], str]], ...] = (
    ("Forecast error per round against the baselines", _section_rmse),
    ("Clinical accuracy: Clarke and Parkes error grids", _section_clarke),
    ("Privacy: DP-SGD epsilon per patient, cumulative over the rounds", _section_epsilon),
    ("Bytes and latency per round", _section_traffic),
    ("Device fleet health", _section_fleet),
    ("Fault timeline", _section_faults),
)


def render_report(summary: dict) -> str:
    """The report page as a string: the answers first, then every section drawn or replaced by a note, then the
    full per-round table and the raw summary folded."""
    if not isinstance(summary, dict):
        raise TypeError(f"summary must be a dict, got {type(summary).__name__}")
    body = [first_screen(summary)]
    optional = (("Model release to devices", "release_checks", _section_release),
                ("Drift of device telemetry", "drift", _section_drift),
                ("Scale: round time by participant count", "scale", _section_scale),
                ("Fairness and explanations", "explanations", report_explanations.section))
    sections = SECTIONS + tuple((title, build) for title, key, build in optional if key in summary)
    sections += (("Every round in full", _section_round_table), ("Everything else in summary.json", _raw))
    for title, build in sections:
        try:
            content = build(summary)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            content = _note(f"This section could not be drawn from the summary: {type(exc).__name__}: {exc}")
        body.append(f"<h2>{_e(title)}</h2>\n{content}")
    title = f"wearfed report: {summary.get('scenario', 'run')}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>\n" + "\n".join(body) + "\n</body></html>\n")


def _raw(summary: dict) -> str:
    return f"<details><summary>Scalar facts of the summary, as recorded</summary>{_section_overview(summary)}</details>"


def write_report(summary: RunSummary | dict, out: Path) -> Path:
    """Write the report to `out` (a file ending .html, or a directory that gets report.html); returns the path.

    The replay passes its validated `RunSummary`; a plain dict (an older or hand-edited summary) is drawn as it
    is, each section that cannot be drawn replaced by a note."""
    if isinstance(summary, RunSummary):
        summary = summary.document()
    out = Path(out)
    path = out if out.suffix.lower() in (".html", ".htm") else out / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(render_report(summary), encoding="utf-8")
    tmp.replace(path)
    return path
