"""Model cards: one per model version, as JSON (`build`) and Markdown (`to_markdown`).

A card holds the version's identity (hash, architecture, status), its data lineage (parent versions and the
rounds that built them), participants, metrics with the source of each (posted / federated / validation),
privacy spend with its units (DP-SGD epsilon at its delta in the unit each update declared: per patient by
default, per training window where a node chose it; per participant, and the lineage's basic-composition sum;
device LDP is accounted on the devices, per patient-day by default, and is not seen by the cloud), and the last gate
check (every gate, passed or failed), and the global importance of its inputs on the validation cohort
(`cloud.explanations`: Integrated Gradients, per input family). Cf. M. Mitchell et al., "Model Cards for Model
Reporting", FAT* 2019.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cloud.db import Round
from cloud.gates import GateConfig
from cloud.governance_db import GateCheck
from cloud.lineage import Lineage
from cloud.record_db import ModelVersion
from federation import model as forecaster

SOURCE_NOTES = {
    "posted": "held-out scores posted by a data scientist (computed off-cloud)",
    "federated": "pooled scores hospitals computed on their own held-out patients (only metrics left the sites)",
    "validation": "scores the cloud computed on its synthetic validation set",
}
LDP_NOTE = ("Device telemetry is locally privatised on the device under a budget per patient-day by default (every "
            "release of a UTC day, glucose, insulin and carbs, charged to the device's odometer; per reading only "
            "where the labelled event-level option is chosen); the cloud never sees it, so it is not accounted here.")


UNIT_NOTES = {"patient": "one patient with all their windows (user-level DP-SGD: patient-level sampling and "
                         "per-patient clipping)",
              "window": "one 2-h training window (record-level DP-SGD, the labelled window-level option)"}


def _unit(spend: dict) -> str:
    """The unit of this round's spends (as each update declared it); "mixed" if they differ."""
    units = {v.get("unit", "window") for v in spend.values()}
    return units.pop() if len(units) == 1 else ("mixed" if units else "patient")


def _iso(ts: datetime) -> str:
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).isoformat()


def build(*, model: ModelVersion, round_: Round | None, lineage: Lineage, metrics: dict[str, dict[str, float]],
          gate_check: GateCheck | None, gate_config: GateConfig, validation: dict | None,
          explanation: dict | None = None, consent: dict | None = None) -> dict:
    spend = (lineage.per_round.get(model.round_id, {}) if model.round_id is not None else {})
    return {
        "card_version": 1,
        "model": {"version": model.version, "status": model.status, "hash": model.hash,
                  "architecture": model.architecture, "parameters": forecaster.N_PARAMS,
                  "created_at": _iso(model.created_at), "task": "CGM forecast at +30 and +60 min from 2 h of "
                  "5-min history (mg/dL)", "replaced_version": model.replaced_version},
        "lineage": {"parent_versions": list(lineage.versions[1:]), "rounds": list(lineage.rounds),
                    "round": None if round_ is None else {
                        "id": round_.id, "base_model_version": round_.base_model_version,
                        "data_cutoff": round_.data_cutoff, "local_epochs": round_.local_epochs,
                        "opened_by": round_.opened_by, "evaluated_by": round_.evaluated_by,
                        "approved_by": round_.approved_by, "decided_by": round_.decided_by,
                        "state": round_.state}},
        "participants": {"contributors": list(model.participants or []), "training_windows": model.n_samples},
        "metrics": {src: {"source_note": SOURCE_NOTES.get(src, src), "values": vals}
                    for src, vals in sorted(metrics.items())},
        "validation_set": validation,
        "privacy": {
            "mechanism": "DP-SGD (Opacus), Poisson sampling, per-sample clipping, Gaussian noise",
            "unit": _unit(spend), "unit_note": UNIT_NOTES.get(_unit(spend), "mixed units: see this_round"),
            "this_round": spend,
            "lineage_epsilon_sum": lineage.epsilon_sum,
            "lineage_note": "sum over the lineage's rounds of the largest per-round epsilon (basic composition, "
                            "an upper bound on any one participant's spend in this model; deltas add likewise)",
            "per_round": {str(k): v for k, v in lineage.per_round.items()},
            "device_ldp": LDP_NOTE},
        "explanations": _explanations(explanation, model.version),
        "gates": {"config": gate_config.as_dict(),
                  "last_check": None if gate_check is None else {
                      "action": gate_check.action, "actor": gate_check.actor, "passed": gate_check.passed,
                      "at": _iso(gate_check.at), "results": gate_check.results}},
        "consent": consent,
    }


def _explanations(doc: dict | None, version: int) -> dict:
    """The card's summary of `cloud.explainer.Explainer.view`: global importance; local ones behind the endpoint."""
    if doc is None or doc.get("status") != "computed":
        return {"status": "unavailable" if doc is None else doc["status"],
                "reason": "no explanation service" if doc is None else doc.get("reason")}
    loc = doc["local"]
    return {"status": "computed", "method": doc["method"], "library": doc["library"], "data": doc["data"],
            "baseline": doc["baseline"], "baseline_forecast30_mgdl": doc["baseline_forecast30_mgdl"],
            "horizon_min": doc["horizon_min"], "windows": doc["global"]["windows"],
            "global_importance": doc["global"]["families"], "top_inputs": doc["global"]["top_inputs"],
            "completeness_gap_mgdl": doc["completeness_gap_mgdl"], "sha256": doc["sha256"],
            "local": {"hypo_forecasts": loc["hypo_forecasts"], "low_confidence_forecasts":
                      loc["low_confidence_forecasts"], "kept": loc["kept"], "criteria": loc["criteria"],
                      "endpoint": f"/v1/models/{version}/explanations"}}


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def to_markdown(card: dict) -> str:
    m, lin, priv, g = card["model"], card["lineage"], card["privacy"], card["gates"]
    lines = [f"# Model card: wearfed forecaster v{m['version']}", "",
             f"- Status: **{m['status']}**", f"- Hash: `{m['hash']}`",
             f"- Architecture: {m['architecture']} ({m['parameters']} parameters)", f"- Task: {m['task']}",
             f"- Created: {m['created_at']}", "", "## Data lineage", "",
             f"- Parent versions: {', '.join(f'v{v}' for v in lin['parent_versions']) or 'none (initial model)'}",
             f"- Rounds: {', '.join(map(str, lin['rounds'])) or 'none'}"]
    if lin["round"]:
        r = lin["round"]
        lines.append(f"- Built by round {r['id']} from v{r['base_model_version']}: data cutoff "
                     f"{_fmt(r['data_cutoff'])}, {r['local_epochs']} local epoch(s); opened by {r['opened_by']}, "
                     f"evaluated by {_fmt(r['evaluated_by'])}, approved by {_fmt(r['approved_by'])}, "
                     f"promoted/rejected by {_fmt(r['decided_by'])} (round state {r['state']})")
    p = card["participants"]
    lines += ["", "## Participants", "", f"- Contributors: {', '.join(p['contributors']) or 'none'}",
              f"- Training windows: {p['training_windows']}", "", "## Metrics", ""]
    if card["metrics"]:
        keys = sorted({k for src in card["metrics"].values() for k in src["values"]})
        lines += ["| metric | " + " | ".join(card["metrics"]) + " |",
                  "|---|" + "---|" * len(card["metrics"])]
        for k in keys:
            lines.append(f"| {k} | " + " | ".join(_fmt(src["values"].get(k)) for src in card["metrics"].values())
                         + " |")
        lines.append("")
        lines += [f"- {src}: {v['source_note']}" for src, v in card["metrics"].items()]
    else:
        lines.append("No metrics recorded.")
    lines += ["", "## Privacy", "", f"- Mechanism: {priv['mechanism']}; unit: {priv['unit']} ({priv['unit_note']})",
              f"- Lineage epsilon (sum): {priv['lineage_epsilon_sum']:.4f} — {priv['lineage_note']}"]
    if priv["this_round"]:
        lines += ["", "| participant | epsilon this round | cumulative epsilon | delta | accountant | unit |",
                  "|---|---|---|---|---|---|"]
        for pid, e in sorted(priv["this_round"].items()):
            lines.append(f"| {pid} | {e['epsilon_round']:.4f} | {e['epsilon_cumulative']:.4f} | {e['delta']:g} | "
                         f"{e['accountant']} | {e['unit']} |")
    lines += ["", f"- {priv['device_ldp']}", "", "## Explanations", ""]
    ex = card.get("explanations") or {"status": "unavailable", "reason": None}
    if ex["status"] != "computed":
        lines.append(f"Not available ({ex['status']}): {_fmt(ex.get('reason'))}")
    else:
        lines += [f"Global importance of the inputs of the +{ex['horizon_min']} min forecast: mean |attribution| "
                  f"({ex['method']}, {ex['library']}) over {ex['windows']} windows of {ex['data']}, against "
                  f"{ex['baseline']} (forecast {ex['baseline_forecast30_mgdl']:.1f} mg/dL).", "",
                  "| input family | mean abs attribution (mg/dL) | share |", "|---|---|---|"]
        for fam, v in sorted(ex["global_importance"].items(), key=lambda p: -p[1]["mean_abs_mgdl"]):
            lines.append(f"| {fam} | {v['mean_abs_mgdl']:.2f} | {100 * v['share']:.1f} % |")
        loc = ex["local"]
        lines += ["", f"- Local explanations: {loc['kept']} kept of {loc['hypo_forecasts']} hypo and "
                      f"{loc['low_confidence_forecasts']} low-confidence forecasts ({loc['criteria']}); "
                      f"`GET {loc['endpoint']}`",
                  f"- Completeness (attributions sum to forecast minus baseline forecast): largest gap "
                  f"{ex['completeness_gap_mgdl']:.4f} mg/dL; document SHA-256 `{ex['sha256']}`"]
    lines += ["", "## Gates", ""]
    last = g["last_check"]
    if last is None:
        lines.append("Not checked yet (gates run at approval and promotion).")
    else:
        lines += [f"Last check: {last['action']} by {last['actor']} at {last['at']}: "
                  f"**{'passed' if last['passed'] else 'FAILED'}**", "", "| gate | source | result | detail |",
                  "|---|---|---|---|"]
        for x in last["results"]:
            lines.append(f"| {x['gate']} | {_fmt(x['source'])} | {'pass' if x['passed'] else 'FAIL'} | "
                         f"{x['detail']} |")
    consent = card.get("consent")
    if consent:
        w, later = consent["withdrawals_before_training"], consent["withdrawals_recorded_to_date"]
        lines += ["", "## Consent withdrawal", "",
                  f"- Withdrawals recorded before this model was built: {w['device']} device(s), {w['patient']} "
                  f"patient(s); to date: {later['device']} device(s), {later['patient']} patient(s)",
                  f"- {consent['statement']}"]
    return "\n".join(lines) + "\n"
