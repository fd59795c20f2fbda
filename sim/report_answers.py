"""The report's first screen: did it work, how private, how accurate, what was held back and why, with what.

Reads a replay's summary (`sim/replay.py`): `rounds` (each with `metrics_by_source`, `gates_failed`, `epsilon`),
`readings`, `release_checks`, `drift`, `initial_model`, `heldout`, `device_privacy` and `parameters`
(`sim/run_facts.py`), `gates`. Every card is drawn on its own: a missing or malformed part becomes a line saying
so, never an exception.
"""

from __future__ import annotations

import html
import math

from sim.outcomes import SOURCE_WORDS, held_back_reason, outcome

UNIT_WORDS = {"patient": "per patient", "window": "per training window", "patient-day": "per patient-day",
              "reading": "per reading"}
DP_UNIT_NOTE = "over the whole training run (all its rounds)"


def _e(value: object) -> str:
    return html.escape(str(value))


def _n(value: object, digits: int = 2) -> str:
    if value is None or isinstance(value, bool):
        return "n/a"
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "n/a"
    if not math.isfinite(v):
        return "n/a"
    return f"{v:,.{digits}f}"


def _pct(value: object) -> str:
    return "n/a" if _n(value) == "n/a" else f"{100 * float(value):.1f}%"  # type: ignore[arg-type]


def _rounds(summary: dict) -> list[dict]:
    rounds = summary.get("rounds")
    return [r for r in rounds if isinstance(r, dict)] if isinstance(rounds, list) else []


def production_row(rounds: list[dict]) -> dict | None:
    """The round whose model was in production at the end of the run (the last promoted), or None."""
    promoted = [r for r in rounds if outcome(r) == "promoted"]
    return promoted[-1] if promoted else None


def _card(title: str, body: str, cls: str = "") -> str:
    return f'<section class="card {cls}"><h2>{_e(title)}</h2>{body}</section>'


def _safe(build, summary: dict) -> str:  # noqa: ANN001 - one of the card builders below
    try:
        return build(summary)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        return _card(build.__doc__ or "?", f'<p class="note">Could not be read from the summary: '
                                           f'{_e(type(exc).__name__)}: {_e(exc)}</p>')


def card_worked(summary: dict) -> str:
    """Did it work?"""
    rounds = _rounds(summary)
    n = len(rounds)
    models = [r for r in rounds if r.get("model_version") is not None]
    promoted = [r for r in rounds if outcome(r) == "promoted"]
    held = [r for r in models if outcome(r) != "promoted"]
    failed = n - len(models)
    ok = n > 0 and len(models) == n and bool(promoted)
    verdict = ("Yes" if ok else "Partly" if promoted else "Trained, not deployed" if models else "No") + ": "
    verdict += (f"{len(models)} of {n} rounds produced a model; {len(promoted)} promoted to production, "
                f"{len(held)} held back" + (f", {failed} failed without a model" if failed else "") + ".")
    lines = [f'<p class="verdict {"good" if ok else "bad"}">{_e(verdict)}</p>', "<ul>"]
    rd = summary.get("readings")
    if isinstance(rd, dict) and "published" in rd:
        lost = rd.get("lost", 0)
        lines.append(f"<li>Readings: {rd['published']:,} published by the devices, {rd.get('ingested', 0):,} "
                     f"ingested by the gateways, <b>{lost:,} lost</b>, {rd.get('duplicates', 0):,} duplicates "
                     f"dropped, {rd.get('rejected', 0):,} rejected.</li>")
    rc = summary.get("release_checks")
    if isinstance(rc, dict) and "promoted" in rc:
        p, t = rc["promoted"], rc["tampered"]
        text = (f"Model v{p['version']} {'reached all' if p['reached_all'] else 'did NOT reach all'} "
                f"{rc['devices']} on-device forecasters; a {t['kind']} release was "
                f"{'refused by all' if t['refused_by_all'] else 'ACCEPTED by some'}")
        b = rc.get("rollback", {})
        if "reached_all" in b:
            text += f"; rollback to v{b['to']} {'reached all' if b['reached_all'] else 'did NOT reach all'}"
        lines.append(f"<li>{_e(text)}.</li>")
    drift = summary.get("drift")
    if isinstance(drift, dict):
        alerts = drift.get("alerts") or []
        lines.append(f"<li>Drift alerts: {len(alerts)}.</li>")
    lines.append("</ul>")
    return _card("Did it work?", "".join(lines))


def _device_lines(summary: dict) -> list[str]:
    dp = summary.get("device_privacy")
    params = (summary.get("parameters") or {}).get("privacy") or {}
    if not isinstance(dp, dict) or not dp.get("gateways"):
        if isinstance(summary.get("parameters"), dict) and not summary["parameters"].get("gateways"):
            return ["<li><b>Devices:</b> none in this run (hospitals only).</li>"]
        mech = params.get("ldp_mechanism")
        if mech == "none":
            return ["<li><b>Devices:</b> no local DP (raw readings leave the device; studies only).</li>"]
        return ['<li><b>Devices:</b> <span class="note">no device odometers in this summary: device epsilon '
                "unknown</span></li>"]
    groups: dict[tuple, list[tuple[str, dict]]] = {}  # gateways with identical settings and spend share a line
    for gw, g in dp["gateways"].items():
        key = tuple(g.get(k) for k in ("mechanism", "unit", "epsilon_per_reading", "daily_cap", "delta",
                                       "max_per_patient_day"))
        groups.setdefault(key, []).append((gw, g))
    out = []
    for members in groups.values():
        g = members[0][1]
        unit = g.get("unit")
        declared = (f"event-level &epsilon; {_n(g.get('epsilon_per_reading'), 0)} per reading, daily cap "
                    f"{_n(g.get('daily_cap'), 0)}" if unit == "reading" else
                    f"&epsilon; {_n(g.get('daily_cap'), 0)} per patient-day")
        names = ", ".join(gw for gw, _ in members)
        devices = sum(m.get("devices", 0) for _, m in members)
        days = sum(m.get("patient_days", 0) for _, m in members)
        out.append(f"<li><b>Devices {_e(names)}</b> ({devices}, local DP {_e(g.get('mechanism'))}): "
                   f"{declared}; <b>spent at most &epsilon; {_n(g.get('max_per_patient_day'), 0)} per "
                   f"patient-day</b> (pure &epsilon;, &delta; {_n(g.get('delta'), 0)}; {days} device-days)</li>")
    return out


def card_private(summary: dict) -> str:
    """How private?"""
    rounds = _rounds(summary)
    lines = ["<ul>", *_device_lines(summary)]
    last: dict[str, dict] = {}
    for r in rounds:
        for p, e in (r.get("epsilon") or {}).items():
            if isinstance(e, dict):
                last[p] = e
    if last:
        units = {UNIT_WORDS.get(e.get("unit"), f"per {e.get('unit')}") for e in last.values()}
        deltas = {e.get("delta") for e in last.values()}
        accts = {str(e.get("accountant")).upper() for e in last.values()}
        cap = (summary.get("parameters") or {}).get("privacy", {}).get("participant_epsilon_cap")
        eps = ", ".join(f"{_e(p)} <b>{_n(e.get('value'))}</b>" for p, e in sorted(last.items()))
        lines.append(f"<li><b>Nodes, DP-SGD</b> (&epsilon; {_e('; '.join(sorted(units)))} {DP_UNIT_NOTE}, "
                     f"&delta; {_e(', '.join(f'{d:g}' for d in deltas if isinstance(d, int | float)))}, "
                     f"{_e(', '.join(sorted(accts)))} accountant"
                     + (f", cap {_n(cap, 1)}" if cap is not None else "") + f"): {eps}</li>")
    else:
        lines.append("<li><b>Nodes, DP-SGD:</b> no round reported an epsilon.</li>")
    extra = []
    if "insecure" in str(summary.get("custodian", "")):
        extra.append("the CKKS secret key was unsealed on this host (insecure dev custodian)")
    rng = (summary.get("forecaster") or {}).get("dp_sgd_randomness", "")
    if "simulation" in rng:
        extra.append("noise seeded for reproducibility (simulation mode)")
    if extra:
        lines.append(f'<li class="warn">Not a deployment: {_e("; ".join(extra))}.</li>')
    lines.append("</ul>")
    return _card("How private?", "".join(lines))


def _vs(model: object, base: object) -> str:
    try:
        m, b = float(model), float(base)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    if not (math.isfinite(m) and math.isfinite(b)) or b <= 0:
        return ""
    change = 100 * (m - b) / b
    word = "lower" if change < 0 else "higher"
    return f" ({abs(change):.1f}% {word})"


def card_accurate(summary: dict) -> str:
    """How accurate?"""
    rounds = _rounds(summary)
    prod = production_row(rounds)
    newest = next((r for r in reversed(rounds) if r.get("model_version") is not None), None)
    held = summary.get("heldout") or {}
    lines = []
    for label, r in (("In production at the end", prod), ("Newest model", newest)):
        if r is None or (label == "Newest model" and r is prod):
            continue
        rows = "".join(
            f"<tr><td class=\"l\">+{h} min</td><td><b>{_n(r.get(f'rmse{h}'))}</b></td>"
            f"<td>{_n(r.get(f'persistence_rmse{h}'))}</td><td class=\"l\">"
            f"{_e(_vs(r.get(f'rmse{h}'), r.get(f'persistence_rmse{h}')).strip(' ()') or 'n/a')}</td></tr>"
            for h in (30, 60))
        lines.append(f"<p><b>{label}: model v{r['model_version']}</b> (round {r.get('round')}, "
                     f"{_e(outcome(r))})</p><table class=\"mini\"><tr><th class=\"l\">RMSE (mg/dL)</th>"
                     f"<th>model</th><th>persistence</th><th class=\"l\">model vs persistence</th></tr>{rows}</table>"
                     f"<p class=\"small\">Clarke A+B {_pct(r.get('clarke_ab30'))}, Parkes A+B "
                     f"{_pct(r.get('parkes_ab30'))}, MARD {_n(r.get('mard30'), 1)}%, hypo sensitivity "
                     f"{_pct(r.get('hypo_sens30'))} (+30 min)</p>")
    if prod is None and newest is not None:
        lines.insert(0, "<p><b>No model in production:</b> every candidate was held back; the untrained v0 "
                        "stays deployed.</p>")
    if not lines:
        lines.append('<p class="note">No round produced a model.</p>')
    init = (summary.get("initial_model") or {}).get("rmse30")
    scope = (f"Scored on {held.get('patients', '?')} held-out virtual patients ({held.get('windows', '?'):,} "
             f"windows) against their CGM" if isinstance(held.get("windows"), int) else "Held-out scores against CGM")
    lines.append(f'<p class="small">{_e(scope)}; persistence = the last reading carried forward.'
                 + (f" Untrained model v0: RMSE@30 {_n(init)} mg/dL." if init is not None else "") + "</p>")
    return _card("How accurate?", "".join(lines))


def _rmse_by_source(r: dict, source: str) -> object:
    return ((r.get("metrics_by_source") or {}).get(source) or {}).get("rmse30")


def rounds_table(summary: dict) -> str:
    """What was held back, and why"""
    rounds = _rounds(summary)
    if not rounds:
        return _card("Rounds", '<p class="note">No rounds in this summary.</p>', "wide")
    sources = ("posted", "federated", "validation")
    head = ("<tr><th rowspan=2>round</th><th rowspan=2 class=\"l\">outcome</th><th rowspan=2>model</th>"
            "<th colspan=3>RMSE +30 min, mg/dL: candidate (model in production then)</th>"
            "<th rowspan=2 class=\"l\">held back because</th></tr><tr>"
            + "".join(f"<th>{_e(SOURCE_WORDS[s])}</th>" for s in sources) + "</tr>")
    body, prod = [], None
    for r in rounds:
        cells = []
        for s in sources:
            cand = _rmse_by_source(r, s)
            before = _rmse_by_source(prod, s) if prod is not None else None
            cells.append(f"<td>{_n(cand)}" + (f' <span class="dim">({_n(before)})</span>' if before is not None
                                                else "") + "</td>")
        o = outcome(r)
        why = held_back_reason(r) or ("—" if o == "promoted" else "")
        cls = "good" if o == "promoted" else "bad"
        body.append(f"<tr><td>{_e(r.get('round'))}</td><td class=\"l {cls}\">{_e(o)}</td>"
                    f"<td>{'v' + _e(r['model_version']) if r.get('model_version') is not None else '—'}</td>"
                    + "".join(cells) + f'<td class="l why">{_e(why)}</td></tr>')
        if o == "promoted":
            prod = r
    gates = summary.get("gates") or {}
    rule = ""
    if gates:
        parts = []
        if gates.get("rmse30_max_mgdl") is not None:
            parts.append(f"RMSE@30 at most {gates['rmse30_max_mgdl']:g} mg/dL")
        if gates.get("rmse30_max_regression") is not None:
            parts.append(f"at most {100 * gates['rmse30_max_regression']:g}% worse than production on each source")
        if gates.get("clarke_ab30_min_percent") is not None:
            parts.append(f"Clarke A+B at least {gates['clarke_ab30_min_percent']:g}%")
        if gates.get("hypo_sens30_min") is not None:
            parts.append(f"hypo sensitivity at least {gates['hypo_sens30_min']:g}")
        if gates.get("lineage_epsilon_max") is not None:
            parts.append(f"lineage &epsilon; at most {gates['lineage_epsilon_max']:g}")
        rule = f'<p class="small">Promotion gates, checked on every source: {"; ".join(parts)}.</p>'
    return _card("Each round: promoted or held back, and why",
                 f'<table class="rounds">{head}{"".join(body)}</table>{rule}', "wide")


def parameters_line(summary: dict) -> str:
    """Run parameters"""
    p = summary.get("parameters")
    if not isinstance(p, dict):
        return '<p class="params note">Run parameters are not in this summary.</p>'
    meta, cohort, rounds, priv = p["scenario"], p["cohort"], p["rounds"], p["privacy"]
    gws, hosps = p.get("gateways") or [], p.get("hospitals") or []
    devices = sum(g["devices"] for g in gws)
    profiles = sorted({g.get("profile") or "dexcom-g7" for g in gws})
    parts = [f"scenario <b>{_e(meta['name'])}</b>, seed {meta['seed']}",
             f"{_n(meta['days'], 1)} simulated day(s) at {_n(meta['accel'], 0)}&times; speed",
             f"{len(gws)} gateways, {devices} devices ({_e(', '.join(profiles))})",
             f"{len(hosps)} hospital(s), {sum(h['patients'] for h in hosps)} patients "
             f"({sum(h.get('eval_holdout_patients', 0) for h in hosps)} kept for evaluation)",
             f"cohort {_e(cohort['source'])}, sensor {_e(cohort['sensor'])}; held-out {cohort['heldout_patients']} "
             f"patients &times; {_n(cohort['heldout_days'], 1)} days",
             f"{rounds['count']} rounds, quorum {rounds['quorum']}, {rounds['local_epochs']} local epochs",
             f"DP-SGD noise multiplier {_e(priv.get('dp_noise_multiplier'))}, &delta; {priv.get('dp_delta'):g}, "
             f"{_e(str(priv.get('dp_accountant')).upper())}, cap {_n(priv.get('participant_epsilon_cap'), 1)} "
             f"per patient",
             f"device LDP {_e(priv.get('ldp_mechanism'))}"
             # a scenario's ldp_epsilon runs as the event-level option (sim/replay.py: --privacy-unit reading)
             + (f" &epsilon; {_n(priv['ldp_epsilon'], 1)} per reading (event-level)"
                if priv.get("ldp_epsilon") is not None else ""),
             f"broker {_e(summary.get('broker'))}, wall time {_n(summary.get('wall_seconds'), 0)} s"]
    return f'<p class="params"><b>Run:</b> {" · ".join(parts)}</p>'


def first_screen(summary: dict) -> str:
    """The four answers and the run's parameters, in one block meant to fit a laptop screen."""
    cards = "".join(_safe(b, summary) for b in (card_worked, card_private, card_accurate))
    try:
        params = parameters_line(summary)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        params = f'<p class="params note">Run parameters could not be read: {_e(type(exc).__name__)}: {_e(exc)}</p>'
    return (f'<div id="first-screen">{params}<div class="cards">{cards}</div>{_safe(rounds_table, summary)}'
            "</div>")
