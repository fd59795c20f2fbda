"""The report's "Fairness and explanations" section, and how a replay fetches what it shows.

Summary keys read: ``summary["explanations"]`` (the cloud's document for the last model version, from
``GET /v1/models/{v}/explanations`` as a data scientist: `fetch`), and per round ``rounds[i]["metrics_by_source"]
["validation"]["<group>_rmse30" | "<group>_hypo_sens30"]`` with ``rounds[i]["gates_failed"]`` (the fairness gates'
figures and refusals). Tables only: the section draws without matplotlib.
"""

from __future__ import annotations

import html
import time

import httpx

from federation.evaluation import AGE_GROUPS

LOCAL_ROWS = 12  # local explanations shown in the report (the document keeps up to the cloud's cap)


def fetch(client: httpx.Client, version: int, *, timeout: float = 180.0) -> dict | None:
    """The explanation document of `version`, waiting for the cloud's worker; None if it never came."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            resp = client.get(f"/v1/models/{version}/explanations")
        except httpx.TransportError:  # a cloud restart (a cloud_crash fault): ask again
            time.sleep(1.0)
            continue
        if resp.status_code != 200:
            return {"status": "refused", "reason": f"HTTP {resp.status_code}: {resp.text[:200]}"}
        doc = resp.json()
        if doc.get("status") != "pending":
            return doc
        time.sleep(1.0)
    return {"status": "pending", "reason": f"not computed within {timeout:g} s"}


def _e(v: object) -> str:
    return html.escape(str(v))


def _table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def _f(v: object, fmt: str = ".1f") -> str:
    return "-" if v is None else format(float(v), fmt)  # type: ignore[arg-type]


def _fairness(summary: dict) -> str:
    rows = []
    for r in summary.get("rounds", []):
        val = (r.get("metrics_by_source") or {}).get("validation") or {}
        if not any(f"{g}_rmse30" in val for g in AGE_GROUPS):
            continue
        fair = [x for x in str(r.get("gates_failed") or "").split("; ") if x.startswith("fairness gate")]
        rows.append([r.get("round"), f"v{r.get('model_version')}",
                     *(_f(val.get(f"{g}_rmse30")) for g in AGE_GROUPS),
                     *(_f(val.get(f"{g}_hypo_sens30"), ".2f") for g in AGE_GROUPS),
                     "; ".join(fair) or ("passed" if r.get("model_status") == "promoted" else "-")])
    if not rows:
        return '<p class="note">No per-age-group validation figures in this run (cloud serve --validation with ' \
               "a set that carries groups).</p>"
    return ("<h3>Fairness gates: the cloud's validation cohort by age group</h3>" + _table(
        ["round", "model", "RMSE@30 children", "adolescents", "adults", "hypo sens@30 children", "adolescents",
         "adults", "fairness gates"], rows))


def _explanations(doc: dict | None) -> str:
    if not doc or doc.get("status") != "computed":
        why = "not fetched" if not doc else f"{doc.get('status')}: {doc.get('reason')}"
        return f'<h3>Explanations</h3><p class="note">No explanation document ({_e(why)}).</p>'
    glob, loc = doc["global"], doc["local"]
    out = [f"<h3>Explanations of model v{_e(doc['model_version'])}</h3>",
           f"<p>{_e(doc['method'])} ({_e(doc['library'])}) of the +{_e(doc['horizon_min'])} min forecast on "
           f"{_e(doc['data'])}, against {_e(doc['baseline'])} (forecast "
           f"{_f(doc['baseline_forecast30_mgdl'])} mg/dL); attributions in mg/dL add up to the forecast minus that "
           f"baseline (largest gap {_f(doc['completeness_gap_mgdl'], '.4f')} mg/dL).</p>",
           _table(["input family", "mean |attribution| (mg/dL)", "share"],
                  [[f, _f(v["mean_abs_mgdl"], ".2f"), f"{100 * v['share']:.1f} %"]
                   for f, v in sorted(glob["families"].items(), key=lambda p: -p[1]["mean_abs_mgdl"])]),
           f"<p>Local explanations: {_e(loc['kept'])} kept of {_e(loc['hypo_forecasts'])} hypo and "
           f"{_e(loc['low_confidence_forecasts'])} low-confidence forecasts ({_e(loc['criteria'])}); the first "
           f"{min(LOCAL_ROWS, loc['kept'])}:</p>"]
    fams = list(glob["families"])
    rows = [[it["window"], it.get("group") or "-", ", ".join(it["reasons"]), _f(it["last_cgm_mgdl"]),
             _f(it["forecast30_mgdl"]), _f(it["spread30_mgdl"]), *(_f(it["families"][f]) for f in fams),
             it["top_inputs"][0]["input"] if it["top_inputs"] else "-"] for it in loc["items"][:LOCAL_ROWS]]
    out.append(_table(["window", "group", "why", "last CGM", "forecast +30", "spread", *fams, "top input"], rows))
    return "".join(out)


def section(summary: dict) -> str:
    """The section's HTML (tables and notes)."""
    return _fairness(summary) + _explanations(summary.get("explanations"))
