"""A self-contained `report.html` from a run's summary: tables and plots, opens offline.

Every plot is a PNG drawn with matplotlib's Agg canvas (no display, no pyplot state) and embedded as a
base64 `data:` URI; the page has inline CSS only, so nothing is fetched from anywhere. Sections and the
summary keys they read (all but `rounds` optional; a missing section is replaced by a note, a malformed one
by a note with the error, never an exception):

- forecast error per round: `rounds[i]["rmse30"|"rmse60"]`, baselines `rounds[i]["<name>_rmse30"]` for
  name in persistence, linear, centralised, or flat lines from `summary["baselines"][name]["rmse30"]`;
- Clarke error grid: `summary["clarke_points"] = {"reference": [...], "prediction": [...]}` (mg/dL);
- epsilon spent per participant: `rounds[i]["epsilon"][participant] = {"value", "delta", "unit", "accountant"}`;
- bytes and latency per round: `rounds[i]["bytes_up"]`, `rounds[i]["seconds"]`;
- device fleet health: `summary["fleet_timeline"] = [{"t", "connected", "buffered", "dropped", "battery"}, ...]`;
- fault timeline: `summary["faults"] = [{"t", "kind", "target", "detail"}, ...]`.
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

from federation.error_grids import ZONES, clarke_zones, zone_fractions

BASELINES = ("persistence", "linear", "centralised")
FLEET_COUNTS = ("connected", "buffered", "dropped")
_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:right}th{background:#f4f4f4}td.l,th.l{text-align:left}
.scroll{overflow-x:auto}.note{color:#666;font-style:italic}.warn{color:#a15c00;font-weight:bold}img{max-width:100%;height:auto}
"""


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _e(value: object) -> str:
    return html.escape(str(value))


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


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


def _when(t: object) -> str:
    """A unix time as ISO-8601 UTC (simulated clock), anything else as given."""
    if isinstance(t, int | float) and not isinstance(t, bool) and 1e9 < t < 4.2e9:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return _fmt(t)


def _timeline_origin(summary: dict) -> float:
    """Shared origin of the fleet and fault timelines, so the two plots line up."""
    ts = [_num(p.get("t")) for key in ("fleet_timeline", "faults") for p in (summary.get(key) or [])
          if isinstance(p, dict)]
    ts = [t for t in ts if not math.isnan(t)]
    if not ts:
        raise ValueError("no timeline entry has a numeric t")
    return min(ts)


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


def _section_rmse(summary: dict) -> str:
    rounds = _rounds(summary)
    if not rounds:
        return _note("No rounds in this summary.")
    x = [r.get("round", i + 1) for i, r in enumerate(rounds)]
    fig = Figure(figsize=(9, 3.8), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    flat = summary.get("baselines") if isinstance(summary.get("baselines"), dict) else {}
    for ax, h in zip(axes, (30, 60), strict=True):
        ax.plot(x, [_num(r.get(f"rmse{h}")) for r in rounds], "o-", color="C0", label="federated model")
        for k, name in enumerate(BASELINES):
            ys = [_num(r.get(f"{name}_rmse{h}")) for r in rounds]
            if not all(math.isnan(y) for y in ys):
                ax.plot(x, ys, "s--", color=f"C{k + 1}", label=name)
            elif isinstance(flat.get(name), dict) and flat[name].get(f"rmse{h}") is not None:
                ax.axhline(_num(flat[name][f"rmse{h}"]), ls="--", color=f"C{k + 1}", label=name)
        # a round "completed" when it produced a model (later states: evaluated, staged, promoted, rejected)
        failed = [xi for xi, r in zip(x, rounds, strict=True)
                  if r.get("model_version") is None and r.get("state") != "completed"]
        for xi in failed:
            ax.axvline(xi, color="red", alpha=0.3, lw=6)
        ax.set_title(f"RMSE @ +{h} min" + (" (red: round without a model)" if failed else ""))
        ax.set_xlabel("round")
        ax.set_ylabel("mg/dL")
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=8)
    cols = [c for c in ("round", "state", "model_version", "rmse30", "mae30", "persistence_rmse30", "rmse60",
                        "mae60", "persistence_rmse60", "bytes_up", "seconds", "failure_reason")
            if any(c in r for r in rounds)]
    extra = sorted({k for r in rounds for k, v in r.items()
                    if k not in cols and isinstance(v, int | float | str) and k != "model_hash"})
    table = _table(cols + extra, [[_fmt(r.get(c)) for c in cols + extra] for r in rounds])
    return _png(fig) + table


def _section_clarke(summary: dict) -> str:
    pts = summary.get("clarke_points")
    if not pts:
        return _note("No Clarke points in this summary (summary['clarke_points'] absent).")
    ref = np.asarray(pts["reference"], dtype=np.float64)
    pred = np.asarray(pts["prediction"], dtype=np.float64)
    frac = zone_fractions(clarke_zones(ref, pred))
    fig = Figure(figsize=(5.5, 5.5))
    ax = fig.subplots()
    ax.scatter(ref, pred, s=4, alpha=0.4, color="C0", edgecolors="none")
    top = 400.0
    lines = [  # Clarke et al. 1987 zone lines, as in federation.error_grids
        ([0, top], [0, top]), ([0, 175 / 3], [70, 70]), ([175 / 3, top / 1.2], [70, top]), ([70, 70], [84, top]),
        ([0, 70], [180, 180]), ([70, 290], [180, top]), ([70, 70], [0, 56]), ([70, top], [56, 320]),
        ([180, 180], [0, 70]), ([180, top], [70, 70]), ([240, 240], [70, 180]), ([240, top], [180, 180]),
        ([130, 180], [0, 70]),
    ]
    for xs, ys in lines:
        ax.plot(xs, ys, color="k", lw=0.8)
    for z, tx, ty in (("A", 30, 15), ("B", 370, 260), ("B", 280, 370), ("C", 160, 370), ("C", 160, 15),
                      ("D", 30, 140), ("D", 370, 120), ("E", 30, 370), ("E", 370, 15)):
        ax.text(tx, ty, z, fontsize=14, fontweight="bold", alpha=0.6)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    ax.set_xlabel("reference glucose (mg/dL)")
    ax.set_ylabel("predicted glucose (mg/dL)")
    ax.set_title(f"Clarke error grid, {len(ref)} pairs")
    table = _table(["zone", *ZONES, "A+B"], [["fraction", *(f"{frac[z]:.3f}" for z in ZONES), f"{frac['AB']:.3f}"]])
    clipped = int(np.sum((ref > top) | (pred > top)))
    note = _note(f"{clipped} pairs above {top:g} mg/dL lie outside the plot (still counted).") if clipped else ""
    return _png(fig) + table + note


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
    ax.set_ylabel("cumulative epsilon")
    units = "; ".join(f"per {u}, delta {d:g}, {a} accountant" if isinstance(d, int | float) else f"per {u}, {a}"
                      for u, d, a in sorted(labels, key=str))
    ax.set_title(f"DP-SGD epsilon spent ({units})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.set_xticks(sorted({r.get("round") for r in rounds}))
    fig.legend(loc="outside right upper", fontsize=8)
    rows = [[p, *(_fmt(r["epsilon"][p].get("value")) if p in r["epsilon"] else "" for r in rounds)]
            for p in participants]
    return _png(fig) + _table(["participant", *(f"round {r.get('round')}" for r in rounds)], rows) + \
        f"<p>Unit of privacy and accountant: {_e(units)}.</p>"


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
    a2.set_ylabel("seconds")
    for ax in (a1, a2):
        ax.set_xlabel("round")
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
    return _png(fig)


def _section_fleet(summary: dict) -> str:
    timeline = summary.get("fleet_timeline")
    if not timeline:
        return _note("No device fleet timeline in this summary (summary['fleet_timeline'] absent).")
    t = np.array([_num(p["t"]) for p in timeline])
    hours = (t - _timeline_origin(summary)) / 3600.0
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    a1, a2 = fig.subplots(1, 2)
    for k, key in enumerate(FLEET_COUNTS):
        if any(key in p for p in timeline):
            a1.plot(hours, [_num(p.get(key)) for p in timeline], color=f"C{k}", label=key)
    a1.set_title("devices")
    a1.legend(fontsize=8, loc="best")
    if any("battery" in p for p in timeline):
        a2.plot(hours, [_num(p.get("battery")) for p in timeline], color="C3")
        a2.set_title("battery (as reported)")
    else:
        a2.text(0.5, 0.5, "no battery figures", ha="center", transform=a2.transAxes)
    for ax in (a1, a2):
        ax.set_xlabel("hours since the start of the timeline")
        ax.grid(alpha=0.3)
    return _png(fig)


def _section_faults(summary: dict) -> str:
    faults = summary.get("faults")
    if not faults:
        return _note("No faults were injected in this run (summary['faults'] absent or empty).")
    kinds = sorted({str(f.get("kind")) for f in faults})
    t = np.array([_num(f.get("t")) for f in faults])
    t0 = _timeline_origin(summary)
    fig = Figure(figsize=(9, 1.0 + 0.45 * len(kinds)), layout="constrained")
    ax = fig.subplots()
    for f, ti in zip(faults, t, strict=True):
        y = kinds.index(str(f.get("kind")))
        ax.plot([(ti - t0) / 3600.0], [y], "D", color=f"C{y % 10}")
        ax.annotate(str(f.get("target", "")), ((ti - t0) / 3600.0, y), xytext=(4, 4), textcoords="offset points",
                    fontsize=7)
    ax.set_yticks(range(len(kinds)), kinds)
    ax.set_ylim(-0.7, len(kinds) - 0.3)
    ax.set_xlabel("hours since the start of the timeline")
    ax.grid(alpha=0.3, axis="x")
    rows = [[_when(f.get("t")), f.get("kind", ""), f.get("target", ""), f.get("detail", "")] for f in faults]
    return _png(fig) + _table(["time", "kind", "target", "detail"], rows)


def _section_overview(summary: dict) -> str:
    parts = []
    if "insecure" in str(summary.get("custodian", "")):
        parts.append(f'<p class="warn">Key custodian: {_e(summary["custodian"])}: the CKKS secret key was '
                     "unsealed on this host; not a deployment configuration.</p>")
    facts = [[k, _fmt(v)] for k, v in summary.items() if isinstance(v, int | float | str) and k != "custodian"]
    if facts:
        parts.append(_table(["", "value"], facts))
    for key, value in summary.items():
        if key in ("rounds", "clarke_points", "fleet_timeline", "faults", "baselines") or not isinstance(value, dict):
            continue
        scalars = [[k, _fmt(v)] for k, v in value.items() if isinstance(v, int | float | str | bool | None)]
        if scalars:
            parts.append(f"<h3>{_e(key)}</h3>" + _table(["", "value"], scalars))
    return "".join(parts)


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
    rows = [[p, d.get("reports"), _fmt(d.get("kl_nats")), d.get("readings"), "yes" if p in alerted else "no"]
            for p, d in sorted(status.get("participants", {}).items())]
    note = _note(f"KL divergence of recent privatised telemetry from the promoted model's training data; alert above "
                 f"{status.get('threshold_nats')} nats, scored once that data covers "
                 f"{status.get('min_reference_hours')} h. {len(alerts)} alert(s).")
    return note + (_table(["participant", "reports", "latest KL (nats)", "readings", "alerted"], rows) if rows
                   else _note("No drift report was scored."))


def _section_scale(summary: dict) -> str:
    scale, runs = summary["scale"], summary.get("runs") or {}
    rows, fig = [], Figure(figsize=(7, 3.2))
    ax = fig.subplots()
    for n in scale["participants"]:
        per_round = [r.get("round_seconds") for r in runs.get(str(n), {}).get("rounds", [])]
        rows.append([n, _fmt(scale.get(f"round_seconds_{n}")), ", ".join(_fmt(t) for t in per_round)])
        ax.plot(range(1, len(per_round) + 1), [_num(t) for t in per_round], marker="o", label=f"{n} participants")
    ax.set_xlabel("round")
    ax.set_ylabel("round wall time (s)")
    ax.legend()
    ratio = scale.get("ratio")
    note = _note(f"Median round time at {max(scale['participants'])} participants over "
                 f"{min(scale['participants'])}: {'n/a' if ratio is None else f'{ratio:.2f}x'}. Every count "
                 f"trains on the same {scale.get('patients')} clinical patients.")
    return note + _png(fig) + _table(["participants", "median round s", "round seconds"], rows)


SECTIONS: tuple[tuple[str, Callable[[dict], str]], ...] = (
    ("Run", _section_overview),
    ("Forecast error per round against the baselines", _section_rmse),
    ("Clarke error grid", _section_clarke),
    ("Privacy: epsilon spent per participant", _section_epsilon),
    ("Bytes and latency per round", _section_traffic),
    ("Device fleet health", _section_fleet),
    ("Fault timeline", _section_faults),
)


def render_report(summary: dict) -> str:
    """The report page as a string; every section is drawn or replaced by a note."""
    if not isinstance(summary, dict):
        raise TypeError(f"summary must be a dict, got {type(summary).__name__}")
    body = []
    optional = (("Model release to devices", "release_checks", _section_release),
                ("Drift of device telemetry", "drift", _section_drift),
                ("Scale: round time by participant count", "scale", _section_scale))
    sections = SECTIONS + tuple((title, build) for title, key, build in optional if key in summary)
    for title, build in sections:
        try:
            content = build(summary)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            content = _note(f"This section could not be drawn from the summary: {type(exc).__name__}: {exc}")
        body.append(f"<h2>{_e(title)}</h2>\n{content}")
    title = f"wearfed report: {summary.get('scenario', 'run')}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(summary: dict, out: Path) -> Path:
    """Write the report to `out` (a file ending .html, or a directory that gets report.html); returns the path."""
    out = Path(out)
    path = out if out.suffix.lower() in (".html", ".htm") else out / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(render_report(summary), encoding="utf-8")
    tmp.replace(path)
    return path
