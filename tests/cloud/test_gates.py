"""Promotion gates: the TOML format and its validation, and every gate failing with its own name (pure)."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from cloud import fairness, gates
from cloud.gates import Candidate, GateConfig, check, failures, load_gates, parse_gates
from federation.errors import ConfigError


def test_shipped_default_file_is_the_documented_default() -> None:
    assert load_gates(None) == GateConfig()
    assert gates.DEFAULT_GATES_FILE.name == "gates.default.toml" and gates.DEFAULT_GATES_FILE.exists()


@pytest.mark.parametrize(("doc", "named"), [
    ({"accuracy": {"rmse30_max_mgdl": "35"}}, "[accuracy] rmse30_max_mgdl must be a number"),
    ({"accuracy": {"rmse30_max_mgdl": True}}, "[accuracy] rmse30_max_mgdl must be a number"),
    ({"accuracy": {"clarke_ab30_min_percent": 120}}, "[accuracy] clarke_ab30_min_percent = 120 is outside"),
    ({"accuracy": {"hypo_sens30_min": -0.1}}, "[accuracy] hypo_sens30_min = -0.1 is outside"),
    ({"accuracy": {"rmse30_max": 30}}, "unknown key(s) ['rmse30_max'] in [accuracy]"),
    ({"accuracy": {"require": ["rmse31"]}}, "[accuracy] require has unknown ['rmse31']"),
    ({"accuracy": {"require": "rmse30"}}, "[accuracy] require must be a list"),
    ({"sources": {"require": ["hospital"]}}, "[sources] require has unknown ['hospital']"),
    ({"privacy": {"lineage_epsilon_max": -1}}, "[privacy] lineage_epsilon_max = -1 is outside"),
    ({"privacy": {"participant_cap": "yes"}}, "[privacy] participant_cap must be true or false"),
    ({"privacy": 3}, "[privacy] must be a table"),
    ({"acuracy": {}}, "unknown section(s) ['acuracy']"),
])
def test_bad_gates_are_refused_naming_the_field(doc: dict, named: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_gates(doc)
    assert named in str(err.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "gates.toml"
    bad.write_text("[accuracy]\nrmse30_max_mgdl = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_gates(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_gates(tmp_path / "missing.toml")
    good = tmp_path / "ok.toml"
    good.write_text("[accuracy]\nhypo_sens30_min = false\nrequire = []\n[sources]\nrequire = ['federated', "
                    "'validation']\n[privacy]\nlineage_epsilon_max = 12.5\n")
    cfg = load_gates(good)
    assert cfg.hypo_sens30_min is None and cfg.require_metrics == () and cfg.lineage_epsilon_max == 12.5
    assert cfg.require_sources == ("federated", "validation") and cfg.rmse30_max_mgdl == 35.0
    assert tomllib.loads(gates.DEFAULT_GATES_FILE.read_text())  # the shipped file parses as plain TOML


GOOD = {"rmse30": 20.0, "clarke_ab30": 0.98, "hypo_sens30": 0.6}
# what the cloud's validation set reports per age group (federation.evaluation.score_windows with groups)
GROUPS = {"child_rmse30": 24.0, "adolescent_rmse30": 20.0, "adult_rmse30": 15.0, "child_hypo_sens30": 0.5,
          "adolescent_hypo_sens30": 0.6, "adult_hypo_sens30": 0.7, "child_hypo_events30": 40.0,
          "adolescent_hypo_events30": 30.0, "adult_hypo_events30": 20.0}
VALID = {**GOOD, **GROUPS}


def _cand(**kw: object) -> Candidate:
    base = {"version": 2, "metrics": {"posted": dict(GOOD)}, "promoted_version": 1,
            "promoted_metrics": {"posted": {"rmse30": 20.0}}, "lineage_epsilon": 5.0, "lineage_rounds": (2, 1)}
    return Candidate(**{**base, **kw})


def test_a_good_candidate_passes_every_gate() -> None:
    results = check(GateConfig(), _cand())
    assert results and not failures(results)
    assert {r.gate for r in results} >= {"required_sources", "rmse30_present", "rmse30_max", "rmse30_regression",
                                         "clarke_ab30_min", "hypo_sens30_min", "lineage_epsilon_max",
                                         "participant_epsilon_cap"}


@pytest.mark.parametrize(("cand", "cfg", "gate", "source"), [
    (_cand(metrics={"posted": {**GOOD, "rmse30": 36.0}}, promoted_metrics={}), GateConfig(), "rmse30_max", "posted"),
    (_cand(metrics={"posted": {**GOOD, "rmse30": 21.5}}), GateConfig(), "rmse30_regression", "posted"),
    (_cand(metrics={"posted": {**GOOD, "clarke_ab30": 0.94}}), GateConfig(), "clarke_ab30_min", "posted"),
    (_cand(metrics={"posted": {**GOOD, "hypo_sens30": 0.1}}), GateConfig(), "hypo_sens30_min", "posted"),
    (_cand(metrics={"posted": GOOD, "validation": {**VALID, "rmse30": 40.0}}), GateConfig(), "rmse30_max",
     "validation"),
    (_cand(metrics={"posted": GOOD, "federated": {**GOOD, "hypo_sens30": 0.05}}), GateConfig(),
     "hypo_sens30_min", "federated"),
    (_cand(metrics={"posted": {"rmse60": 30.0}}), GateConfig(), "rmse30_present", None),
    (_cand(metrics={"validation": VALID}), GateConfig(), "required_sources", "posted"),
    (_cand(), GateConfig(require_sources=("posted", "federated")), "required_sources", "federated"),
    (_cand(lineage_epsilon=31.0), GateConfig(), "lineage_epsilon_max", None),
    (_cand(over_cap=("gw-1: epsilon 11 > cap 10",)), GateConfig(), "participant_epsilon_cap", None),
])
def test_each_gate_fails_by_name(cand: Candidate, cfg: GateConfig, gate: str, source: str | None) -> None:
    failed = failures(check(cfg, cand))
    assert [(f.gate, f.source) for f in failed] == [(gate, source)]
    kind = "privacy" if gate in ("lineage_epsilon_max", "participant_epsilon_cap") else "accuracy"
    assert failed[0].message.startswith(f"{kind} gate {gate}")


@pytest.mark.parametrize(("units", "said"), [(("patient",), "per patient"),
                                             (("patient", "window"), "per patient or per window")])
def test_the_lineage_gate_names_the_privacy_units_the_updates_declared(units: tuple[str, ...], said: str) -> None:
    (result,) = [r for r in check(GateConfig(), _cand(lineage_units=units)) if r.gate == "lineage_epsilon_max"]
    assert f"the largest per-round epsilon, {said})" in result.detail


def test_disabled_gates_do_not_run() -> None:
    cfg = GateConfig(rmse30_max_mgdl=None, clarke_ab30_min_percent=None, hypo_sens30_min=None,
                     lineage_epsilon_max=None, participant_cap=False, rmse30_max_regression=None)
    bad = _cand(metrics={"posted": {"rmse30": 99.0, "clarke_ab30": 0.1, "hypo_sens30": 0.0}}, lineage_epsilon=1e4,
                over_cap=("x",))
    assert not failures(check(cfg, bad))


def test_check_gates_cli_and_serve_refuse_a_bad_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "gates.toml"
    bad.write_text("[accuracy]\nclarke_ab30_min_percent = 101\n")
    out = subprocess.run([sys.executable, "-m", "federation.cli", "cloud", "check-gates", "--gates", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "[accuracy] clarke_ab30_min_percent = 101 is outside" in out.stderr
    ok = subprocess.run([sys.executable, "-m", "federation.cli", "cloud", "check-gates"], capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0 and '"lineage_epsilon_max": 30.0' in ok.stdout
    serve = subprocess.run([sys.executable, "-m", "federation.cli", "cloud", "serve", "--port", "9", "--db",
                            f"sqlite:///{tmp_path / 'c.db'}", "--state-dir", str(tmp_path / "s"),
                            "--dev-insecure-custodian", "--gates", str(bad)], capture_output=True, text=True,
                           timeout=120)
    assert serve.returncode == 2 and "clarke_ab30_min_percent" in serve.stderr


def test_a_candidate_with_fair_group_figures_passes_the_fairness_gates() -> None:
    results = check(GateConfig(), _cand(metrics={"posted": GOOD, "validation": VALID}))
    assert not failures(results)
    fair = {r.gate for r in results if r.source == "validation"} & set(fairness.GATES)
    assert fair == set(fairness.GATES)  # every fairness gate ran on the validation figures


@pytest.mark.parametrize(("change", "gate", "reason"), [
    ({"adolescent_rmse30": 41.5, "child_rmse30": 30.0, "adult_rmse30": 30.0}, "worst_group_rmse30",
     "adolescents 41.5 above 40.0 mg/dL"),
    ({"adult_rmse30": 8.0}, "group_rmse30_gap", "children minus adults 16.0 above 15.0 mg/dL"),
    ({"child_hypo_sens30": 0.0}, "worst_group_hypo_sens30",
     "children 0.00 (95 % upper bound 0.09, 40 hypo windows) below 0.10"),
    ({"adult_rmse30": None}, "group_figures_present", "rmse30 missing for adults"),
])
def test_each_fairness_gate_fails_by_name_with_the_group(change: dict, gate: str, reason: str) -> None:
    val = {k: v for k, v in {**VALID, **change}.items() if v is not None}
    failed = failures(check(GateConfig(), _cand(metrics={"posted": GOOD, "validation": val})))
    assert [(f.gate, f.source) for f in failed] == [(gate, "validation")]
    assert failed[0].message.startswith(f"fairness gate {gate} (validation): {reason}")


def test_hypo_gates_refuse_on_evidence_not_on_a_handful_of_windows() -> None:
    # the demo's adolescents: 1 of 11 hypo windows caught. 0.09 is below the floor of 0.10, but 11 windows cannot
    # show that the model's sensitivity for the group is: the 95 % upper bound is 0.38
    few = {**VALID, "adolescent_hypo_sens30": 1 / 11, "adolescent_hypo_events30": 11.0}
    worst = next(r for r in check(GateConfig(), _cand(metrics={"posted": GOOD, "validation": few}))
                 if r.gate == "worst_group_hypo_sens30")
    assert worst.passed and worst.detail.startswith("adolescents 0.09 (95 % upper bound 0.38, 11 hypo windows)")
    many = {**few, "adolescent_hypo_sens30": 0.05, "adolescent_hypo_events30": 400.0}  # 20 of 400: evidence
    failed = failures(check(GateConfig(), _cand(metrics={"posted": GOOD, "validation": many})))
    assert [f.gate for f in failed] == ["worst_group_hypo_sens30"]
    lo, hi = fairness.wilson(1 / 11, 11)
    assert (round(lo, 3), round(hi, 3)) == (0.016, 0.377)  # Wilson 1927, z = 1.96 (checked by hand)
    assert fairness.wilson(0.0, 0.0) == (0.0, 1.0)


def test_the_hypo_gap_gate_uses_the_confident_gap() -> None:
    cfg = GateConfig(fairness=dataclasses.replace(gates.DEFAULT_FAIRNESS, worst_group_hypo_sens30_min=None))
    wide = {**VALID, "child_hypo_sens30": 0.0, "child_hypo_events30": 100.0, "adult_hypo_sens30": 1.0,
            "adult_hypo_events30": 100.0}
    failed = failures(check(cfg, _cand(metrics={"posted": GOOD, "validation": wide})))
    assert [f.gate for f in failed] == ["group_hypo_sens30_gap"]
    assert failed[0].message.startswith("fairness gate group_hypo_sens30_gap (validation): adults minus children "
                                        "1.00, at least 0.93 at 95 % above 0.80")
    narrow = {**wide, "child_hypo_events30": 12.0, "adult_hypo_events30": 12.0}  # the same rates, few windows
    assert not failures(check(cfg, _cand(metrics={"posted": GOOD, "validation": narrow})))


def test_a_group_with_few_hypos_is_named_not_gated() -> None:
    val = {**VALID, "child_hypo_sens30": 0.0, "child_hypo_events30": 3.0}
    results = check(GateConfig(), _cand(metrics={"posted": GOOD, "validation": val}))
    assert not failures(results)
    worst = next(r for r in results if r.gate == "worst_group_hypo_sens30")
    assert "children under 10 hypo windows, not gated" in worst.detail and worst.detail.startswith("adolescents 0.60")


def test_fairness_judges_the_sources_named_and_can_be_switched_off(tmp_path: Path) -> None:
    posted = {**GOOD, "child_rmse30": 45.0, "adolescent_rmse30": 20.0, "adult_rmse30": 15.0}
    assert not failures(check(GateConfig(), _cand(metrics={"posted": posted})))  # by default: validation only
    both = tmp_path / "both.toml"
    both.write_text('[fairness]\nsources = ["posted", "validation"]\n')
    failed = failures(check(load_gates(both), _cand(metrics={"posted": posted})))
    assert {f.gate for f in failed} == {"worst_group_rmse30", "group_rmse30_gap"}
    failed = failures(check(GateConfig(), _cand(metrics={"posted": GOOD, "validation": posted})))
    assert {f.gate for f in failed} == {"worst_group_rmse30", "group_rmse30_gap"}
    off = tmp_path / "gates.toml"
    off.write_text("[fairness]\nworst_group_rmse30_max_mgdl = false\ngroup_rmse30_gap_max_mgdl = 40\n")
    cfg = load_gates(off)
    assert cfg.fairness.worst_group_rmse30_max_mgdl is None and cfg.fairness.group_rmse30_gap_max_mgdl == 40.0
    assert cfg.fairness.require == ("validation",)  # omitted keys keep the shipped defaults
    assert not failures(check(cfg, _cand(metrics={"posted": GOOD, "validation": posted})))
    with pytest.raises(ConfigError, match=r"\[fairness\] sources has unknown \['hallway'\]"):
        both.write_text('[fairness]\nsources = ["hallway"]\n')
        load_gates(both)


@pytest.mark.parametrize(("doc", "named"), [
    ({"fairness": {"worst_group_rmse30_max_mgdl": "16"}}, "[fairness] worst_group_rmse30_max_mgdl must be a number"),
    ({"fairness": {"worst_group_hypo_sens30_min": 1.5}}, "[fairness] worst_group_hypo_sens30_min = 1.5 is outside"),
    ({"fairness": {"min_group_hypo_events": False}}, "[fairness] min_group_hypo_events must be a number"),
    ({"fairness": {"require": ["hospital"]}}, "[fairness] require has unknown ['hospital']"),
    ({"fairness": {"worst_group_rmse": 16}}, "unknown key(s) ['worst_group_rmse'] in [fairness]"),
])
def test_bad_fairness_gates_are_refused_naming_the_field(doc: dict, named: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_gates(doc)
    assert named in str(err.value)
