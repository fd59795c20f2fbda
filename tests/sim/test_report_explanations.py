"""The report's "Fairness and explanations" section: drawn from an explanation document the cloud computed and
the validation cohort's per-group figures, escaped, and absent (with a note) when the run has neither."""

from __future__ import annotations

import numpy as np

from cloud.explanations import explain
from federation import model
from sim.html_report import render_report
from sim.report_explanations import section
from tests.cloud.governance_helpers import synthetic_windows


def _summary() -> dict:
    x, _ = synthetic_windows(1.0, seed=2)
    groups = np.array(["child", "adolescent", "adult"])[np.arange(len(x)) % 3]
    doc = {"status": "computed", "model_version": 2, **explain(model.init_weights(seed=2), x, groups=groups,
                                                                 max_local=4)}
    val = {"child_rmse30": 21.25, "adolescent_rmse30": 17.5, "adult_rmse30": 12.0, "child_hypo_sens30": 0.5}
    rounds = [{"round": 1, "model_version": 1, "model_status": "promoted", "metrics_by_source": {"validation": val}},
              {"round": 2, "model_version": 2, "model_status": "candidate", "metrics_by_source": {"validation": val},
               "gates_failed": "accuracy gate rmse30_max (posted): x; fairness gate group_rmse30_gap (validation): "
                               "children minus adults 9.2 above 5.0 mg/dL <b>"}]
    return {"scenario": "t", "rounds": rounds, "explanations": doc}


def test_section_shows_group_figures_the_fairness_refusal_and_the_attributions() -> None:
    s = _summary()
    html = section(s)
    assert "<td>21.2</td><td>17.5</td><td>12.0</td><td>0.50</td><td>-</td>" in html  # children's 21.25 rounds even
    assert "fairness gate group_rmse30_gap (validation)" in html and "accuracy gate" not in html
    assert "&lt;b&gt;" in html and "<b>" not in html  # server text is escaped
    doc = s["explanations"]
    first, v = max(doc["global"]["families"].items(), key=lambda p: p[1]["mean_abs_mgdl"])
    row = f"<tr><td>{first}</td><td>{v['mean_abs_mgdl']:.2f}</td><td>{100 * v['share']:.1f} %</td></tr>"
    assert row in html and html.index(row) < html.index("<td>time of day</td>")  # most important first
    assert html.count("<tr>") == 1 + 2 + 1 + 5 + 1 + doc["local"]["kept"]  # headers and rows of the three tables
    page = render_report(s)
    assert "<h2>Fairness and explanations</h2>" in page and "Explanations of model v2" in page


def test_without_figures_or_document_the_section_says_so() -> None:
    html = section({"rounds": [{"round": 1}], "explanations": {"status": "unavailable", "reason": "no validation"}})
    assert "No per-age-group validation figures" in html and "unavailable: no validation" in html
    assert "Fairness and explanations" not in render_report({"rounds": []})  # only when the run fetched one
