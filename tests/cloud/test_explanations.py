"""Explanations of model versions: Integrated-Gradients completeness, a constructed model whose forecast is driven
by carbs on board, and the served document (model card, audit ledger, roles) over real HTTP on a real uvicorn."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from cloud import explanations
from federation import model
from federation.features import FEATURE_NAMES, FEATURE_SCALE
from tests.cloud.governance_helpers import served, synthetic_windows, write_validation_set
from tests.cloud.participants import ADMIN, FakeNode, create_user, open_round, random_delta, wait_state

COB = model.HISTORY_STEPS + FEATURE_NAMES.index("cob_g")


def _windows(seed: int = 0) -> np.ndarray:
    """Synthetic glucose histories with every feature drawn around its scale (insulin, carbs, time of day...)."""
    x, _ = synthetic_windows(1.0, seed=seed)
    rng = np.random.default_rng(seed)
    x[:, model.HISTORY_STEPS:] = np.abs(rng.normal(0, 1, (len(x), len(FEATURE_NAMES)))) * FEATURE_SCALE
    return x


def _carb_driven_weights() -> np.ndarray:
    """fc1 unit 0 = relu(cob / 50), fc2 unit 0 = relu(that), +30 min output = 2 x it: in mg/dL the forecast is the
    last reading plus 2 mg/dL per gram of carbs on board (`model.predict`'s residual form); every other weight 0."""
    layers = [(np.zeros((s.fan_out, s.fan_in), np.float32), np.zeros(s.fan_out, np.float32)) for s in model.LAYERS]
    layers[0][0][0, COB] = 1.0
    layers[1][0][0, 0] = 1.0
    layers[2][0][0, 0] = 2.0
    return np.concatenate([p.reshape(-1) for w, b in layers for p in (w, b)]).astype(np.float32)


@pytest.mark.parametrize("seed", [1, 2])
def test_attributions_add_up_to_the_forecast_difference(seed: int) -> None:
    x = _windows(seed)
    w = model.init_weights(seed=seed)
    baseline = x.mean(axis=0)
    a = explanations.attribute(w, x[:200], baseline, n_steps=64)
    # completeness (Sundararajan et al. 2017, eq. 3), checked against the numpy forward pass, not Captum's own delta
    diff = model.predict(w, x[:200])[:, 0] - model.predict(w, baseline[None])[0, 0]
    assert np.abs(a.values.sum(axis=1) - diff).max() < 0.5  # mg/dL, quadrature error over ReLU kinks
    assert np.abs(diff).max() > 20  # the windows differ from the baseline: the check is not vacuous
    assert np.allclose(a.forecast, model.predict(w, x[:200])[:, 0], atol=1e-3)
    fam = explanations.by_family(a.values)
    assert np.allclose(fam.sum(axis=1), a.values.sum(axis=1))  # families partition the inputs


def test_a_forecast_driven_by_carbs_on_board_names_carbs_first() -> None:
    x = _windows(3)
    w = _carb_driven_weights()
    assert np.allclose(model.predict(w, x)[:, 0], x[:, model.LAST_GLUCOSE] + 2 * x[:, COB], atol=1e-3)
    baseline = x.mean(axis=0)
    meal = x[:1].copy()
    meal[0, COB] = 80.0  # 80 g on board
    meal[0, :model.HISTORY_STEPS] = baseline[:model.HISTORY_STEPS]  # glucose as the mean window's
    a = explanations.attribute(w, meal, baseline)
    fam = dict(zip(explanations.FAMILIES, explanations.by_family(a.values)[0], strict=True))
    assert max(fam, key=lambda f: abs(fam[f])) == "carbs on board"
    assert fam["carbs on board"] == pytest.approx(2 * (80.0 - baseline[COB]), abs=0.05)
    assert abs(fam["glucose history"]) < 1e-6 and abs(fam["insulin on board"]) < 1e-6
    doc = explanations.explain(w, np.concatenate([x, meal]), max_local=5)
    assert next(iter(doc["global"]["families"])) == "carbs on board"  # sorted by importance
    assert doc["global"]["top_inputs"][0]["input"] == "cob_g"


def test_local_explanations_cover_hypo_forecasts_first_and_are_bounded() -> None:
    x = _windows(4)
    w = _carb_driven_weights()
    x[:30, :model.HISTORY_STEPS] = 50.0  # 30 windows at 50 mg/dL ...
    x[:30, COB] = 0.0  # ... with no carbs: forecasts 50 mg/dL, hypoglycaemic
    doc = explanations.explain(w, x, max_local=12)
    loc = doc["local"]
    assert loc["hypo_forecasts"] == 30 and loc["kept"] == 12 and len(loc["items"]) == 12
    assert all("hypo" in it["reasons"] and it["forecast30_mgdl"] < 70 for it in loc["items"])
    assert all(it["window"] < 30 for it in loc["items"])
    assert doc["completeness_gap_mgdl"] < 0.5


def _wait_explained(http: httpx.Client, version: int, headers: dict, timeout: float = 240) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        doc = http.get(f"/v1/models/{version}/explanations", headers=headers).json()
        if doc["status"] == "computed":
            return doc
        time.sleep(0.5)
    raise AssertionError(f"v{version} not explained in {timeout} s: {doc}")


def test_each_version_is_explained_off_the_request_path_and_served_to_the_right_roles(tmp_path: Path) -> None:
    val = write_validation_set(tmp_path / "val.npz")
    with served(tmp_path, validation_file=val) as cloud, httpx.Client(base_url=cloud.url, timeout=30) as http:
        staff = {r: create_user(http, f"{r.replace('_', '-')}-1", r) for r in
                 ("operator", "data_scientist", "compliance_officer", "auditor", "monitor")}
        v0 = _wait_explained(http, 0, staff["data_scientist"])  # the initial model, explained at start-up
        assert v0["model_version"] == 0 and v0["library"] == "captum 0.9.0"
        nodes = [FakeNode(http, f"gw-{i}") for i in (1, 2, 3)]
        for n in nodes:
            assert n.enroll().status_code == 201
        rid = open_round(http, headers=staff["operator"])
        for i, n in enumerate(nodes):
            assert n.submit(rid, n.submission(rid, random_delta(i), n_samples=20, base_version=0)).status_code == 200
        version = wait_state(http, rid, ("completed",))["result_model_version"]
        doc = _wait_explained(http, version, staff["auditor"])
        shares = {f: v["share"] for f, v in doc["global"]["families"].items()}
        assert set(shares) == set(explanations.FAMILIES) and sum(shares.values()) == pytest.approx(1, abs=1e-3)
        assert doc["local"]["kept"] <= explanations.MAX_LOCAL and doc["local"]["kept"] == len(doc["local"]["items"])
        assert doc["local"]["kept"] >= 1 and all(it["reasons"] for it in doc["local"]["items"])
        assert {it["group"] for it in doc["local"]["items"]} <= {"child", "adolescent", "adult"}
        assert doc["completeness_gap_mgdl"] < 0.5 and doc["validation_set"]["file"] == str(val)

        card = http.get(f"/v1/models/{version}/card", headers=staff["compliance_officer"]).json()["explanations"]
        assert card["status"] == "computed" and card["sha256"] == doc["sha256"]
        assert card["global_importance"] == doc["global"]["families"]
        md = http.get(f"/v1/models/{version}/card", params={"format": "md"}, headers=staff["auditor"]).text
        assert "## Explanations" in md and "| glucose history |" in md
        audit = http.get("/v1/audit/entries", headers=staff["auditor"], params={"limit": 1000}).json()
        logged = [e["detail"] for e in audit if e["kind"] == "model.explained"]
        assert {d["model_version"]: d["sha256"] for d in logged}[version] == doc["sha256"]

        path = f"/v1/models/{version}/explanations"
        assert http.get(path).status_code == 401  # anonymous
        assert http.get(path, headers={"Authorization": "Bearer wf_forged"}).status_code == 401
        for role in ("operator", "monitor"):
            resp = http.get(path, headers=staff[role])
            assert resp.status_code == 403 and "model.explain" in resp.json()["detail"]
        assert http.get(path, headers=ADMIN).status_code == 403  # admins administer; they do not read models
        assert http.get("/v1/models/999/explanations", headers=staff["auditor"]).status_code == 404


def test_without_a_validation_set_nothing_is_explained_and_the_card_says_why(tmp_path: Path) -> None:
    with served(tmp_path) as cloud, httpx.Client(base_url=cloud.url, timeout=30) as http:
        auditor = create_user(http, "auditor-1", "auditor")
        doc = http.get("/v1/models/0/explanations", headers=auditor).json()
        assert doc["status"] == "unavailable" and "validation set" in doc["reason"]
        card = http.get("/v1/models/0/card", headers=auditor).json()
        assert card["explanations"]["status"] == "unavailable"
