"""Promotion gates: the TOML format and its validation, and every gate failing with its own name (pure)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cloud import gates
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
    (_cand(metrics={"posted": GOOD, "validation": {**GOOD, "rmse30": 40.0}}), GateConfig(), "rmse30_max",
     "validation"),
    (_cand(metrics={"posted": GOOD, "federated": {**GOOD, "hypo_sens30": 0.05}}), GateConfig(),
     "hypo_sens30_min", "federated"),
    (_cand(metrics={"posted": {"rmse60": 30.0}}), GateConfig(), "rmse30_present", None),
    (_cand(metrics={"validation": GOOD}), GateConfig(), "required_sources", "posted"),
    (_cand(), GateConfig(require_sources=("posted", "federated")), "required_sources", "federated"),
    (_cand(lineage_epsilon=31.0), GateConfig(), "lineage_epsilon_max", None),
    (_cand(over_cap=("gw-1: epsilon 11 > cap 10",)), GateConfig(), "participant_epsilon_cap", None),
])
def test_each_gate_fails_by_name(cand: Candidate, cfg: GateConfig, gate: str, source: str | None) -> None:
    failed = failures(check(cfg, cand))
    assert [(f.gate, f.source) for f in failed] == [(gate, source)]
    kind = "privacy" if gate in ("lineage_epsilon_max", "participant_epsilon_cap") else "accuracy"
    assert failed[0].message.startswith(f"{kind} gate {gate}")


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
