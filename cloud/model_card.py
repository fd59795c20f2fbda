"""Model cards: one per model version, as JSON (`build`) and Markdown (`to_markdown`).

A card holds the version's identity (hash, architecture, status), its data lineage (parent versions and the
rounds that built them), participants, metrics with the source of each (posted / federated / validation),
privacy spend with its units (DP-SGD epsilon at its delta per training window, per participant, and the
lineage's basic-composition sum; device LDP is per reading and is not seen by the cloud), and the last gate
check (every gate, passed or failed). Cf. M. Mitchell et al., "Model Cards for Model Reporting", FAT* 2019.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cloud.db import ModelVersion, Round
from cloud.gates import GateConfig
from cloud.governance_db import GateCheck
from cloud.lineage import Lineage
from federation import model as forecaster

SOURCE_NOTES = {
    "posted": "held-out scores posted by a data scientist (computed off-cloud)",
    "federated": "pooled scores hospitals computed on their own held-out patients (only metrics left the sites)",
    "validation": "scores the cloud computed on its synthetic validation set",
}
LDP_NOTE = ("Device telemetry is locally privatised per reading (epsilon per reading, composed per day on each "
            "device's odometer); the cloud never sees it, so it is not accounted here.")


def _iso(ts: datetime) -> str:
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).isoformat()


def build(*, model: ModelVersion, round_: Round | None, lineage: Lineage, metrics: dict[str, dict[str, float]],
          gate_check: GateCheck | None, gate_config: GateConfig, validation: dict | None) -> dict:
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
            "unit": "window", "unit_note": "one 2-h training window (record-level DP)",
            "this_round": spend,
            "lineage_epsilon_sum": lineage.epsilon_sum,
            "lineage_note": "sum over the lineage's rounds of the largest per-round epsilon (basic composition, "
                            "an upper bound on any one participant's spend in this model; deltas add likewise)",
            "per_round": {str(k): v for k, v in lineage.per_round.items()},
            "device_ldp": LDP_NOTE},
        "gates": {"config": gate_config.as_dict(),
                  "last_check": None if gate_check is None else {
                      "action": gate_check.action, "actor": gate_check.actor, "passed": gate_check.passed,
                      "at": _iso(gate_check.at), "results": gate_check.results}},
    }


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
    lines += ["", f"- {priv['device_ldp']}", "", "## Gates", ""]
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
    return "\n".join(lines) + "\n"
