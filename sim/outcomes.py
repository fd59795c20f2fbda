"""A round's outcome in plain words: promoted, held back by a named gate (and why), or failed without a model.

The cloud refuses an approval with `"; "`-joined gate messages of the form
``"<accuracy|privacy|fairness> gate <name> (<source>): <detail>"`` (`cloud/gates.py`, `GateResult.message`);
the replay keeps that text as the round's `gates_failed`. This module turns it into a sentence a researcher
reads; text it does not recognise (a rule rather than a gate, e.g. segregation of duties) is passed through unchanged.
"""

from __future__ import annotations

import re

GATE_WORDS = {  # cloud/gates.py's gate names
    "rmse30_max": "forecast error at +30 min above the allowed ceiling",
    "rmse30_regression": "worse than the model in production by more than the allowed margin",
    "clarke_ab30_min": "too few +30 min forecasts in Clarke zones A+B",
    "hypo_sens30_min": "misses too many hypoglycaemia windows at +30 min",
    "required_sources": "a required evaluation had not reported",
    "rmse30_present": "no evaluation reported RMSE at +30 min",
    "lineage_epsilon_max": "the model's training lineage spent more privacy (epsilon) than allowed",
    "participant_epsilon_cap": "a contributor went over its cumulative epsilon cap",
    # fairness gates (cloud/fairness.py)
    "group_figures_present": "an evaluation lacked the per-age-group figures the fairness gates need",
    "worst_group_rmse30": "the worst-served age group's forecast error at +30 min is above the ceiling",
    "group_rmse30_gap": "the gap in forecast error between age groups is too wide",
    "worst_group_hypo_sens30": "the worst-served age group misses too many hypoglycaemia windows",
    "group_hypo_sens30_gap": "hypoglycaemia detection differs too much between age groups",
}
FAIRNESS_GATES = ("group_figures_present", "worst_group_rmse30", "group_rmse30_gap", "worst_group_hypo_sens30",
                  "group_hypo_sens30_gap")
SOURCE_WORDS = {
    "posted": "held-out virtual patients (data scientist)",
    "federated": "hospitals' held-out patients (federated evaluation)",
    "validation": "the cloud's validation cohort",
}
_GATE = re.compile(r"^(?P<kind>accuracy|privacy|fairness) gate (?P<gate>[a-z0-9_]+)"
                   r"(?: \((?P<source>[a-z]+)\))?: (?P<detail>.*)$")


def parse_gate_failures(text: str) -> list[dict]:
    """Each failed gate of a refusal message: kind, gate, source (or None), detail and the plain sentence."""
    out = []
    for part in (p.strip() for p in str(text).split("; ")):
        if not part:
            continue
        m = _GATE.match(part)
        if m is None:
            out.append({"kind": None, "gate": None, "source": None, "detail": part, "plain": part})
            continue
        gate, source = m["gate"], m["source"]
        plain = GATE_WORDS.get(gate, f"{m['kind']} gate {gate} failed")
        where = f" on {SOURCE_WORDS.get(source, source)}" if source else ""
        out.append({"kind": m["kind"], "gate": gate, "source": source, "detail": m["detail"],
                    "plain": f"{plain}{where} ({m['detail']})"})
    return out


def held_back_reason(row: dict) -> str | None:
    """Why this round's model did not reach production, in plain words; None when it did (or nothing says why)."""
    if row.get("model_version") is None:
        reason = row.get("failure_reason")
        return f"no model: {reason}" if reason else "no model was produced"
    if row.get("gates_failed"):
        return "; ".join(f["plain"] for f in parse_gate_failures(row["gates_failed"]))
    if row.get("failure_reason"):
        return str(row["failure_reason"])
    return None


def outcome(row: dict) -> str:
    """One word or phrase for the round: promoted, held back, failed (or the cloud's state when none fits)."""
    if row.get("model_version") is None:
        return "failed (no model)"
    if row.get("state") == "promoted" or row.get("model_status") in ("promoted", "retired", "rolled_back"):
        return "promoted"
    if row.get("gates_failed"):
        return "held back by a gate"
    return str(row.get("state") or "unknown")
