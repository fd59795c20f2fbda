"""Fairness gates over real HTTP: the cloud scores each candidate on its validation cohort per age group, and a
round whose worst group fails is held back with the gate and the group named (real uvicorn, real SQLite)."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import numpy as np
import pytest

from federation import model
from federation.errors import SchemaError
from federation.evaluation import load_validation_set_groups, save_validation_set, score_windows
from tests.cloud.governance_helpers import served, synthetic_windows, write_validation_set
from tests.cloud.participants import ADMIN, FakeNode, assert_reason, create_user, open_round, random_delta, wait_state

# accuracy gates off so only fairness decides; the group gates the test sets are the ones that matter
GATES = """[accuracy]
rmse30_max_mgdl = false
clarke_ab30_min_percent = false
hypo_sens30_min = false
[sources]
require = ["posted", "validation"]
[fairness]
worst_group_rmse30_max_mgdl = {worst}
group_rmse30_gap_max_mgdl = 15.0
worst_group_hypo_sens30_min = false
group_hypo_sens30_gap_max = false
"""


def _round(http: httpx.Client) -> tuple[dict, int, int]:
    staff = {r: create_user(http, f"{r.replace('_', '-')}-1", r) for r in ("operator", "data_scientist",
                                                                           "compliance_officer")}
    nodes = [FakeNode(http, f"gw-{i}") for i in (1, 2, 3)]
    for n in nodes:
        assert n.enroll().status_code == 201
    rid = open_round(http, headers=staff["operator"])
    for i, n in enumerate(nodes):
        assert n.submit(rid, n.submission(rid, random_delta(i), n_samples=20, base_version=0)).status_code == 200
    report = wait_state(http, rid, ("completed", "failed"))
    assert report["state"] == "completed", report
    version = report["result_model_version"]
    posted = http.post(f"/v1/rounds/{rid}/metrics", json={"metrics": {"rmse30": 20.0}},
                       headers=staff["data_scientist"])
    assert posted.status_code == 200
    return staff, rid, version


def _expected(http: httpx.Client, version: int, path: Path) -> dict[str, float]:
    """The per-group figures recomputed here from the candidate's weights and the same file."""
    raw = http.get(f"/v1/models/{version}", headers=ADMIN).json()["weights"]
    x, y, _, groups = load_validation_set_groups(path)
    return score_windows(np.frombuffer(base64.b64decode(raw), dtype=np.float32), x, y, groups=groups)


def test_a_group_the_model_serves_worse_holds_the_round_back_by_name(tmp_path: Path) -> None:
    val = write_validation_set(tmp_path / "val.npz", shift={"adolescent": 90.0})
    gates = tmp_path / "gates.toml"
    gates.write_text(GATES.format(worst="false"))
    with served(tmp_path, gates_file=gates, validation_file=val) as cloud, \
            httpx.Client(base_url=cloud.url, timeout=30) as http:
        staff, rid, version = _round(http)
        fig = http.get(f"/v1/models/{version}/evaluations", headers=staff["compliance_officer"]).json()
        val_scores = fig["by_source"]["validation"]
        expected = _expected(http, version, val)
        for g in ("child", "adolescent", "adult"):
            assert val_scores[f"{g}_rmse30"] == expected[f"{g}_rmse30"]
            assert val_scores[f"{g}_n_windows"] == expected[f"{g}_n_windows"] > 150
        gap = expected["adolescent_rmse30"] - min(expected["child_rmse30"], expected["adult_rmse30"])
        assert gap > 15.0  # the shifted group is the worst by far
        resp = http.post(f"/v1/rounds/{rid}/approve", headers=staff["compliance_officer"])
        assert_reason(resp, 409, "fairness gate group_rmse30_gap (validation): adolescents minus")
        assert f"{gap:.1f} above 15.0 mg/dL" in resp.json()["detail"]
        assert http.get(f"/v1/rounds/{rid}", headers=ADMIN).json()["state"] == "evaluated"  # held back
        audit = http.get("/v1/audit/entries", headers=staff["compliance_officer"], params={"limit": 1000}).json()
        checked = [e for e in audit if e["kind"] == "gates.checked"][-1]["detail"]
        assert checked["failed"] == ["group_rmse30_gap(validation)"]


def test_the_same_round_passes_when_the_groups_are_served_alike(tmp_path: Path) -> None:
    val = write_validation_set(tmp_path / "val.npz")
    gates = tmp_path / "gates.toml"
    gates.write_text(GATES.format(worst="1000.0"))
    with served(tmp_path, gates_file=gates, validation_file=val) as cloud, \
            httpx.Client(base_url=cloud.url, timeout=30) as http:
        staff, rid, version = _round(http)
        resp = http.post(f"/v1/rounds/{rid}/approve", headers=staff["compliance_officer"])
        assert resp.status_code == 200 and resp.json()["state"] == "staged", resp.text
        card = http.get(f"/v1/models/{version}/card", headers=staff["compliance_officer"]).json()
        fair = {r["gate"]: r for r in card["gates"]["last_check"]["results"] if r["source"] == "validation"}
        assert fair["worst_group_rmse30"]["passed"] and fair["group_rmse30_gap"]["passed"]
        assert fair["group_figures_present"]["passed"]
        expected = _expected(http, version, val)
        worst = max(("child", "adolescent", "adult"), key=lambda g: expected[f"{g}_rmse30"])
        plural = {"child": "children", "adolescent": "adolescents", "adult": "adults"}[worst]
        assert fair["worst_group_rmse30"]["detail"].startswith(f"{plural} {expected[f'{worst}_rmse30']:.1f} within")


@pytest.mark.parametrize(("groups", "named"), [
    (lambda n: np.array(["child"] * (n - 1)), "groups must be"),  # one short
    (lambda n: np.array(["child"] * (n - 1) + ["elderly"]), "unknown age group(s) ['elderly']"),
    (lambda n: np.arange(n), "groups must be"),  # numbers, not names
])
def test_a_validation_file_with_bad_groups_is_refused_naming_the_file(tmp_path: Path, groups, named: str) -> None:  # noqa: ANN001
    x, y = synthetic_windows(1.0, seed=1)
    bad = tmp_path / "val.npz"
    np.savez(bad, x=x, y=y, groups=groups(len(x)))
    with pytest.raises(SchemaError) as err:
        load_validation_set_groups(bad)
    assert str(bad) in str(err.value) and named in str(err.value)
    with pytest.raises(SchemaError):
        save_validation_set(tmp_path / "out.npz", x, y, groups=groups(len(x)))


def test_per_group_scores_add_up_to_the_whole() -> None:
    x, y = synthetic_windows(2.0, seed=3)
    groups = np.array(["child", "adolescent", "adult"])[np.arange(len(x)) % 3]
    s = score_windows(model.init_weights(seed=0), x, y, groups=groups)
    n = [s[f"{g}_n_windows"] for g in ("child", "adolescent", "adult")]
    assert sum(n) == s["n_windows"]
    mse = sum(k * s[f"{g}_rmse30"] ** 2 for k, g in zip(n, ("child", "adolescent", "adult"), strict=True)) / sum(n)
    assert mse ** 0.5 == pytest.approx(s["rmse30"], rel=1e-9)
    assert sum(s[f"{g}_hypo_events30"] for g in ("child", "adolescent", "adult")) == s["hypo_events30"]
