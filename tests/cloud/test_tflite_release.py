"""The real cloud signs a TFLite artifact for each promotion and re-signs the previous one at a rollback."""

from __future__ import annotations

import base64
import logging
import time

import httpx
import numpy as np
import pytest

from cloud import tflite_export
from cloud.errors import Conflict
from federation import model
from federation.litert import TFLiteForecaster
from federation.release import verify_tflite_release
from tests.cloud.participants import ADMIN, FakeNode, create_user, run_round

pytestmark = pytest.mark.usefixtures("tflite_export")  # clouds here export (off elsewhere in the suite)

CURRENT = "/v1/releases/current/tflite"


@pytest.fixture
def staff(http: httpx.Client) -> dict[str, dict]:
    return {role: create_user(http, f"{role.replace('_', '-')}-1", role)
            for role in ("operator", "data_scientist", "compliance_officer", "auditor")} | {"admin": ADMIN}


def wait_tflite(http: httpx.Client, *, serial: int, timeout: float = 120) -> dict:
    """Poll the current TFLite release until release `serial` is served (the export runs in the background)."""
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        last = http.get(CURRENT)
        if last.status_code == 200 and last.json()["manifest"]["serial"] >= serial:
            return last.json()
        assert last.status_code in (200, 409), last.text
        time.sleep(0.2)
    raise AssertionError(f"release {serial} never served: {last.status_code} {last.text}")


def promote_round(http: httpx.Client, nodes: list[FakeNode], staff: dict, *, seed: int) -> int:
    rid = run_round(http, nodes, seed=seed)["round"]
    assert http.post(f"/v1/rounds/{rid}/metrics", json={"metrics": {"rmse30": 20.0}},
                     headers=staff["data_scientist"]).status_code == 200
    assert http.post(f"/v1/rounds/{rid}/approve", headers=staff["compliance_officer"]).status_code == 200
    assert http.post(f"/v1/rounds/{rid}/promote", headers=staff["operator"]).status_code == 200
    return http.get("/v1/models/promoted").json()["version"]


def test_promotion_exports_and_signs_and_rollback_serves_the_previous_model(http: httpx.Client, staff: dict,
                                                                           nodes: list[FakeNode]) -> None:
    key = http.get("/v1/release-key").json()["public_key"]
    first = wait_tflite(http, serial=1)  # nothing promoted yet: v0 is exported when first asked
    m0, _ = verify_tflite_release(first, key)
    assert m0.version == 0
    version = promote_round(http, nodes, staff, seed=3)
    doc = wait_tflite(http, serial=2)
    manifest, data = verify_tflite_release(doc, key)
    assert (manifest.version, manifest.serial) == (version, 2)
    promoted = http.get("/v1/models/promoted").json()
    assert manifest.created_at == promoted["created_at"] and manifest.model_hash == promoted["hash"]
    assert manifest.max_abs_diff_mgdl < tflite_export.MAX_ABS_DIFF_MGDL
    weights = np.frombuffer(base64.b64decode(promoted["weights"]), dtype=np.float32)
    x, _ = tflite_export.load_validation()
    assert np.max(np.abs(TFLiteForecaster(data).predict(x[:100]) - model.predict(weights, x[:100]))) < 0.1
    sd = manifest.calib.residual_sd_mgdl
    assert all(s > 0 for s in sd) and manifest.calib.n_windows == len(x)

    back = http.post("/v1/models/rollback", json={"reason": "alerts on devices"}, headers=staff["operator"])
    assert back.status_code == 200
    after = wait_tflite(http, serial=3)  # a new serial, so devices holding release 2 accept it
    m3, _ = verify_tflite_release(after, key)
    assert (m3.version, m3.serial, m3.tflite_sha256) == (0, 3, m0.tflite_sha256)  # the cached v0 file, re-signed
    assert http.get(f"/v1/models/{version}/release/tflite").json()["manifest"]["serial"] == 2
    assert http.get("/v1/models/77/release/tflite").status_code == 404
    status = http.get("/v1/releases/tflite-status").json()
    assert status["head"] == {"serial": 3, "version": 0} and status["state"] == "signed"
    kinds = [e["kind"] for e in http.get("/v1/audit/entries", headers=staff["auditor"]).json()]
    assert kinds.count("release.tflite_signed") == 3


def test_missing_litert_torch_is_said_in_the_api_and_the_log(http: httpx.Client, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    # litert-torch is installed here; this stands in for a cloud without it (the only thing replaced)
    monkeypatch.setattr(tflite_export, "exporter_missing", lambda: "litert-torch is not installed: pip install x")
    caplog.set_level(logging.ERROR, logger="cloud.releases")
    deadline, resp = time.time() + 60, None
    while time.time() < deadline:
        resp = http.get(CURRENT)
        assert resp.status_code == 409
        if "not installed" in resp.json()["detail"]:
            break
        time.sleep(0.1)
    assert "not installed" in resp.json()["detail"] and "v0" in resp.json()["detail"]
    assert any("not installed" in r.getMessage() for r in caplog.records)
    assert "not installed" in http.get("/v1/releases/tflite-status").json()["exporter"]


def test_a_restarted_cloud_serves_what_it_signed_and_resumes_an_unsigned_head(cloud, http: httpx.Client) -> None:  # noqa: ANN001
    from cloud.releases import ReleaseArtifacts

    signed = wait_tflite(http, serial=1)
    directory = cloud.state_dir / "releases"
    again = ReleaseArtifacts(cloud.units.store, cloud.units.registry, directory)  # a restart: nothing in memory
    assert again.current() == signed  # served from disk, no new export
    # a crash between taking serial 2 and signing it: the restarted cloud takes a new serial and signs that
    (directory / "index.json").write_text('{"serial": 2, "head": {"serial": 2, "version": 0}}')
    again = ReleaseArtifacts(cloud.units.store, cloud.units.registry, directory)
    try:  # queues serial 3; re-signing the cached file may finish before this call returns, or not
        again.current()
    except Conflict as exc:
        assert "being exported" in str(exc) or "release 3" in str(exc)
    deadline = time.time() + 60
    while time.time() < deadline and (directory / "signed" / "3.json").exists() is False:
        time.sleep(0.1)
    doc = again.current()
    assert (doc["manifest"]["serial"], doc["manifest"]["version"]) == (3, 0)
    assert doc["manifest"]["tflite_sha256"] == signed["manifest"]["tflite_sha256"]  # the cached file
    again.close()


def test_disagreement_refuses_the_release_and_is_audited(http: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tflite_export, "MAX_ABS_DIFF_MGDL", 0.0)  # no real export agrees within 0 mg/dL
    deadline, resp = time.time() + 120, None
    while time.time() < deadline:
        resp = http.get(CURRENT)
        assert resp.status_code == 409
        if "refused" in resp.json()["detail"]:
            break
        time.sleep(0.2)
    assert "refused" in resp.json()["detail"] and "differ by up to" in resp.json()["detail"]
    auditor = create_user(http, "auditor-2", "auditor")
    kinds = [e["kind"] for e in http.get("/v1/audit/entries", headers=auditor).json()]
    assert "release.tflite_refused" in kinds and "release.tflite_signed" not in kinds
