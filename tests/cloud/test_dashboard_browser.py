"""The dashboard in a real browser: Debian's Chromium (Selenium, /usr/bin/chromedriver) against the real cloud under
uvicorn, with fake nodes that speak the secure-aggregation protocol. Each role signs in with its bearer token and
sees what it may read and nothing more; epsilon changes live while a round completes; a halt is requested and
approved by two people in the page and the next round goes on without the halted participant; an auditor cannot
halt; a compliance officer approves and an operator deploys from the page. Screenshots land in the test's tmp_path.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import httpx
import pytest
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.cloud.governance_helpers import drift_report, glucose, served, write_validation_set
from tests.cloud.participants import (
    ADMIN,
    FakeNode,
    create_user,
    open_round,
    random_delta,
    run_round,
    wait_state,
)
from tests.conftest import ADMIN_TOKEN, COMPLIANCE_TOKEN

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
T0 = 1_767_225_600.0  # 2026-01-01T00:00Z: drift windows in reading time

# Written by hand from cloud/rbac.py's intent (issue 17), not derived from it: the panels each role sees.
EVERY_PANEL = {"privacy", "epsilon", "alerts", "approvals", "rounds", "models", "explanations", "drift", "audit"}
PANELS = {
    "admin": {"privacy", "approvals", "rounds", "models", "drift"},
    "data_scientist": {"rounds", "models", "explanations", "drift"},
    "compliance_officer": EVERY_PANEL,
    "operator": {"privacy", "rounds", "models", "drift"},
    "auditor": EVERY_PANEL,
}
MAY_HALT = {"admin", "compliance_officer"}
MAY_ROLL_BACK = {"admin", "operator"}
MAY_VERIFY = {"auditor", "compliance_officer"}


@pytest.fixture(autouse=True)
def _no_tflite_export(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEARFED_TFLITE_EXPORT", "off")  # a promotion would start a heavy export child


class Dashboard:
    """The page, driven as a person would: type the token, click, read what is on screen."""

    def __init__(self, driver, url: str, shots: Path) -> None:  # noqa: ANN001 - a Selenium WebDriver
        self.d = driver
        self.url = url
        self.shots = shots
        shots.mkdir(parents=True, exist_ok=True)

    def wait(self, cond, what: str, timeout: float = 20.0):  # noqa: ANN001, ANN201
        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.05).until(lambda _d: cond())
        except TimeoutException as exc:
            raise AssertionError(f"timed out waiting for {what}") from exc

    def sign_in(self, token: str, *, expect_role: str | None = None) -> None:
        self.d.get(f"{self.url}/dashboard")
        self.wait(lambda: self.d.find_element(By.ID, "token").is_displayed(), "the sign-in form")
        self.d.find_element(By.ID, "token").send_keys(token)
        self.d.find_element(By.ID, "signin").click()
        if expect_role is None:
            return
        self.wait(lambda: self.d.execute_script("return document.body.dataset.role") == expect_role, "signed in")
        self.wait(self.loaded, "every visible panel loaded")

    def loaded(self) -> bool:
        return bool(self.d.execute_script(
            "return window.wfDashboard.loads > 0 && [...document.querySelectorAll('#panels > section')]"
            ".filter(s => !s.hidden).every(s => s.dataset.loaded)"))

    def sign_out(self) -> None:
        self.d.find_element(By.ID, "signout").click()
        self.wait(lambda: self.d.find_element(By.ID, "login").is_displayed(), "the sign-in form again")

    def visible_panels(self) -> set[str]:
        return set(self.d.execute_script(
            "return [...document.querySelectorAll('#panels > section')].filter(s => !s.hidden).map(s => s.id)"))

    # read in one script call each: live updates redraw rows, so an element found a moment ago may be gone
    def count(self, css: str) -> int:
        return self.d.execute_script("return document.querySelectorAll(arguments[0]).length", css)

    def visible_count(self, css: str) -> int:
        return self.d.execute_script(
            "return [...document.querySelectorAll(arguments[0])].filter(e => e.offsetParent !== null).length", css)

    def text(self, css: str) -> str:
        found = self.d.execute_script("const e = document.querySelector(arguments[0]); return e && e.innerText", css)
        if found is None:
            raise AssertionError(f"nothing on the page matches {css}")
        return found.strip()

    def click(self, css: str) -> None:
        """Click as a person would; retried if a live update redrew the element in between."""
        for _ in range(20):
            try:
                self.d.find_element(By.CSS_SELECTOR, css).click()
                return
            except StaleElementReferenceException:
                continue
        raise AssertionError(f"{css} kept being redrawn")

    def type(self, css: str, text: str) -> None:
        for _ in range(20):
            try:
                box = self.d.find_element(By.CSS_SELECTOR, css)
                box.clear()
                box.send_keys(text)
                if box.get_attribute("value") == text:
                    return
            except StaleElementReferenceException:
                continue
        raise AssertionError(f"{css} kept being redrawn")

    def eps(self, pid: str) -> str:
        return self.text(f'tr[data-participant="{pid}"] .eps')

    def fetch(self, method: str, path: str, body: dict | None = None) -> dict:
        """A request from inside the page with the signed-in user's own token: what the API answers that role."""
        return self.d.execute_async_script("""
            const [method, path, body, done] = arguments;
            fetch(path, {method, headers: {"Authorization": "Bearer " + sessionStorage.getItem("wearfed.token"),
                                           "Content-Type": "application/json"},
                         body: body === null ? undefined : JSON.stringify(body)})
              .then(async r => done({status: r.status, body: await r.json()}));""", method, path, body)

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        height = self.d.execute_script("return document.body.scrollHeight")
        self.d.set_window_size(1440, min(max(int(height) + 40, 900), 6000))  # the whole page
        self.d.save_screenshot(str(path))
        return path


def _nodes(http: httpx.Client, n: int) -> list[FakeNode]:
    out = [FakeNode(http, f"gw-{i}") for i in range(1, n + 1)]
    for node in out:
        assert node.enroll().status_code == 201
    return out


def _submit_all(http: httpx.Client, rid: int, nodes: list[FakeNode], *, seed: int = 0) -> dict:
    base = http.get(f"/v1/rounds/{rid}", headers=ADMIN).json()["base_model_version"]
    for i, node in enumerate(nodes):
        assert node.submit(rid, node.submission(rid, random_delta(seed + i), n_samples=30,
                                                base_version=base)).status_code == 200
    return wait_state(http, rid, ("completed", "failed"), nodes=nodes)


def test_each_role_sees_what_it_may_read_and_nothing_more(cloud, http, nodes, browser, tmp_path: Path) -> None:  # noqa: ANN001
    run_round(http, nodes)
    tokens = {"admin": ADMIN_TOKEN, "compliance_officer": COMPLIANCE_TOKEN}
    for role in ("data_scientist", "operator", "auditor", "monitor"):
        tokens[role] = create_user(http, f"{role.replace('_', '-')}-1", role)["Authorization"].removeprefix("Bearer ")
    page = Dashboard(browser, cloud.url, tmp_path / "screenshots")
    for role, expected in PANELS.items():
        page.sign_in(tokens[role], expect_role=role)
        assert page.visible_panels() == expected, role
        # what is hidden was never fetched: no rows, no plots
        for hidden in EVERY_PANEL - expected:
            assert page.count(f"#{hidden} tbody tr, #{hidden} svg, #{hidden} li") == 0, (role, hidden)
        assert (page.count("button.halt") == 3) == (role in MAY_HALT), role
        assert page.visible_count("#rollback") == (role in MAY_ROLL_BACK), role
        assert page.visible_count("#verify") == (role in MAY_VERIFY), role
        if "privacy" in expected:
            assert page.eps("gw-1") != "0" and "per window" in page.text('tr[data-participant="gw-1"]')
        if "epsilon" in expected:
            assert page.count("#epsilon-chart g.series") == 3
        # the page hides, and the API refuses: the privacy ledger is for auditors and compliance officers only
        assert page.fetch("GET", "/v1/privacy/ledger")["status"] == (200 if "epsilon" in expected else 403), role
        page.shot(f"role-{role}")
        page.sign_out()
        # nothing the last user was shown stays in the document for the next one
        assert page.count("#panels tbody tr, #panels svg, #panels li") == 0, role
        assert "signed out" in page.text("#login-error")
    page.sign_in(tokens["monitor"])
    page.wait(lambda: "no dashboard" in page.text("#login-error"), "the monitor role refused")
    page.sign_in("wf_not-a-token")
    page.wait(lambda: "not accepted" in page.text("#login-error"), "an unknown token refused")
    assert page.d.execute_script("return sessionStorage.getItem('wearfed.token')") is None
    assert "wf_" not in page.d.current_url  # the token never travels in a URL


def test_epsilon_changes_live_while_a_round_completes(cloud, http, nodes, browser, tmp_path: Path) -> None:  # noqa: ANN001
    page = Dashboard(browser, cloud.url, tmp_path / "screenshots")
    page.sign_in(COMPLIANCE_TOKEN, expect_role="compliance_officer")
    assert page.eps("gw-1") == "0" and page.count("#epsilon-chart g.series") == 0
    browser.execute_script("window.__sameDocument = true")  # no reload may happen below
    rid = open_round(http)
    base = http.get(f"/v1/rounds/{rid}", headers=ADMIN).json()["base_model_version"]
    seen = {}
    for i, node in enumerate(nodes):
        assert node.submit(rid, node.submission(rid, random_delta(i), n_samples=30, base_version=base)).status_code \
            == 200
        spent = {p["id"]: p["epsilon_spent"] for p in http.get("/v1/participants", headers=ADMIN).json()}
        want = f"{float(f'{spent[node.id]:.4g}'):g}"
        page.wait(lambda node=node, want=want: page.eps(node.id) == want, f"{node.id}'s epsilon {want} on screen")
        seen[node.id] = page.eps(node.id)
        if i == 0:  # the others have not submitted yet
            assert page.eps("gw-2") == "0" and page.count("#epsilon-chart g.series") >= 1
            page.shot("live-epsilon-after-first-update")
    assert all(v != "0" for v in seen.values())
    report = wait_state(http, rid, ("completed",))
    page.wait(lambda: page.text(f'tr[data-round="{rid}"] .badge') == "completed", "round completed on screen")
    assert set(page.text(f'tr[data-round="{rid}"] .contributors').split("\n")[0].split(", ")) == set(
        report["contributors"])
    assert page.count("#epsilon-chart g.series") == 3
    assert browser.execute_script("return window.__sameDocument") is True
    # the live feed also brought the ledger's new entries
    page.wait(lambda: int(page.text("#ledger-size")) == len(cloud.audit_entries()), "the ledger's size")
    page.shot("live-round-completed")


def test_halt_by_two_people_in_the_page_and_the_next_round_excludes_it(cloud, http, browser, tmp_path: Path) -> None:  # noqa: ANN001
    nodes = _nodes(http, 4)
    _submit_all(http, open_round(http), nodes)
    page = Dashboard(browser, cloud.url, tmp_path / "screenshots")
    page.sign_in(COMPLIANCE_TOKEN, expect_role="compliance_officer")
    reason = 'sensor fault <img src=x onerror="window.__pwned=1">'
    page.type('tr[data-participant="gw-4"] input.reason', reason)
    page.click('tr[data-participant="gw-4"] button.halt')
    page.wait(lambda: "awaits a second person" in page.text("#toast"), "the request acknowledged")
    page.wait(lambda: page.count("#approval-table tr.pending") == 1, "the pending request listed")
    assert "another person decides" in page.text("#approval-table tr.pending")  # not by the one who asked
    assert page.count("#approval-table tr.pending button.approve") == 0
    assert http.get("/v1/participants", headers=ADMIN).json()[3]["halted"] is False  # one person is not enough
    page.shot("halt-requested")
    page.sign_out()

    page.sign_in(ADMIN_TOKEN, expect_role="admin")
    page.click("#approval-table tr.pending button.approve")
    page.wait(lambda: "halted" in page.text('tr[data-participant="gw-4"] .status'), "gw-4 halted on screen")
    status = page.text('tr[data-participant="gw-4"] .status')
    assert reason in status and "requested by compliance" in status and "approved by admin" in status
    # the reason is text, never markup
    assert page.count("#participants img") == 0 and page.d.execute_script("return window.__pwned") is None
    page.shot("halted-participant")

    rid = open_round(http, nodes=nodes[:3])
    assert "gw-4" not in http.get(f"/v1/rounds/{rid}", headers=ADMIN).json()["expected"]
    report = _submit_all(http, rid, nodes[:3], seed=10)
    assert report["state"] == "completed" and sorted(report["contributors"]) == ["gw-1", "gw-2", "gw-3"]
    page.wait(lambda: page.text(f'tr[data-round="{rid}"] .badge') == "completed", "round 2 completed on screen")
    row = page.text(f'tr[data-round="{rid}"] .contributors')
    assert row.startswith("gw-1, gw-2, gw-3") and "gw-4" not in row and "expected 3" in row
    assert page.count(f'tr[data-round="{rid - 1}"]') == 1 and "gw-4" in page.text(f'tr[data-round="{rid - 1}"]')
    page.shot("next-round-without-halted")
    # a halted participant's submission is refused by the API (not just hidden by the page)
    late = nodes[3].submit(rid, nodes[3].submission(rid, random_delta(99), n_samples=30, base_version=1))
    assert late.status_code in (403, 409)


def test_an_auditor_cannot_halt(cloud, http, nodes, browser, tmp_path: Path) -> None:  # noqa: ANN001
    run_round(http, nodes)
    auditor = create_user(http, "auditor-1", "auditor")["Authorization"].removeprefix("Bearer ")
    page = Dashboard(browser, cloud.url, tmp_path / "screenshots")
    page.sign_in(auditor, expect_role="auditor")
    assert page.count('tr[data-participant="gw-1"]') == 1 and page.count("button.halt, button.resume") == 0
    refused = page.fetch("POST", "/v1/participants/gw-1/halt", {"reason": "an auditor tries"})
    assert refused["status"] == 403 and "participant.halt" in refused["body"]["detail"]
    assert not [a for a in http.get("/v1/approvals", headers=ADMIN).json() if a["action"] == "participant.halt"]
    denied = [e for e in cloud.audit_entries() if e["kind"] == "access.denied" and e["actor"] == "auditor-1"]
    assert denied and denied[-1]["detail"]["action"] == "participant.halt"
    # what an auditor may do: verify the ledger now
    page.click("#verify")
    page.wait(lambda: page.text("#verify-result").startswith("✓"), "the verification result")
    assert "signed checkpoints verified against the pinned key" in page.text("#verify-result")
    page.wait(lambda: "audit.verified" in page.text("#audit-table"), "the verification audited and shown")
    page.shot("auditor")


def test_compliance_approves_and_operator_deploys_from_the_page(cloud, http, nodes, browser, tmp_path: Path) -> None:  # noqa: ANN001
    ds = create_user(http, "scientist-1", "data_scientist")
    operator = create_user(http, "operator-1", "operator")["Authorization"].removeprefix("Bearer ")
    for i, n in enumerate(nodes):  # a day of telemetry histograms before the round: the training reference
        for w in range(4):
            assert http.post("/v1/drift/reports", json=drift_report(
                n, glucose(750, mean=140, seed=10 * i + w), t_start=T0 + w * 21600.0,
                t_end=T0 + (w + 1) * 21600.0)).status_code == 200
    rid = open_round(http, headers=ds)
    _submit_all(http, rid, nodes)
    assert http.post(f"/v1/rounds/{rid}/metrics", json={"metrics": {"rmse30": 20.0, "persistence_rmse30": 24.0}},
                     headers=ds).status_code == 200
    page = Dashboard(browser, cloud.url, tmp_path / "screenshots")
    page.sign_in(COMPLIANCE_TOKEN, expect_role="compliance_officer")
    assert page.count(f'tr[data-round="{rid}"] button.promote') == 0  # deploying is the operator's
    page.click(f'tr[data-round="{rid}"] button.approve')
    page.wait(lambda: page.text(f'tr[data-round="{rid}"] .badge') == "staged", "round staged")
    assert "✓ all" in page.text(f'tr[data-round="{rid}"] .gates')
    page.click(f'tr[data-round="{rid}"] details summary')  # every gate, by source
    page.wait(lambda: "✓ rmse30_max (posted)" in page.text(f'tr[data-round="{rid}"] .gates'), "every gate listed")
    assert page.count("#rmse-chart g.series") == 2  # the model and persistence, as posted
    page.sign_out()
    page.sign_in(operator, expect_role="operator")
    assert page.count(f'tr[data-round="{rid}"] button.approve') == 0
    page.click(f'tr[data-round="{rid}"] button.promote')
    page.wait(lambda: page.text(f'tr[data-round="{rid}"] .badge') == "promoted", "round promoted")
    assert "deployed by operator-1" in page.text(f'tr[data-round="{rid}"]')
    page.wait(lambda: page.text('tr[data-model="1"] .badge') == "promoted", "model v1 promoted on screen")
    # telemetry after the deployment: gw-1 as trained, gw-2 shifted far past the threshold (KL over time, live)
    for k in range(3):
        t = T0 + 86400.0 + k * 21600.0
        http.post("/v1/drift/reports", json=drift_report(nodes[0], glucose(1500, mean=140, seed=50 + k), t_start=t,
                                                           t_end=t + 21600.0))
        http.post("/v1/drift/reports", json=drift_report(nodes[1], glucose(1500, mean=150 + 55 * k, seed=60 + k),
                                                           t_start=t, t_end=t + 21600.0))
    page.wait(lambda: page.count("#drift-chart g.series circle") == 6, "six scored windows plotted")
    assert page.count("#drift-chart .hline") == 1 and "alert threshold 1.5 nats" in page.text("#drift")
    assert page.count('#drift-chart circle[fill="#dc2626"]') >= 1  # gw-2's windows above the threshold, in red
    assert "gw-2: KL" in page.text("#drift-alerts")
    page.shot("drift")
    page.type("#rollback-reason", "hypo alerts on devices")
    page.click("#rollback")
    page.wait(lambda: page.text('tr[data-model="1"] .badge') == "rolled_back", "model v1 rolled back on screen")
    kinds = [e["kind"] for e in cloud.audit_entries()]
    assert "model.promoted" in kinds and "model.rolled_back" in kinds
    with contextlib.suppress(Exception):
        page.click('tr[data-model="1"] button.card-btn')
        page.wait(lambda: "Model card" in page.text("#card"), "the model card")
    page.shot("operator-deployed")


def test_the_explanations_panel_shows_the_promoted_models_attributions(db_url, browser, tmp_path: Path) -> None:  # noqa: ANN001
    # its own cloud (served with a validation set) on SQLite; db_url only satisfies the module's parametrisation
    with served(tmp_path, validation_file=write_validation_set(tmp_path / "val.npz")) as cloud, \
            httpx.Client(base_url=cloud.url, timeout=30) as http:
        token = create_user(http, "auditor-1", "auditor")
        page = Dashboard(browser, cloud.url, tmp_path / "screenshots")
        page.sign_in(token["Authorization"].removeprefix("Bearer "), expect_role="auditor")
        doc = {"status": "pending"}
        for _ in range(240):  # the initial model is explained at start-up, in the explainer's thread
            doc = http.get("/v1/models/0/explanations", headers=token).json()
            if doc["status"] == "computed":
                break
            time.sleep(0.5)
        assert doc["status"] == "computed", doc
        # the "model.explained" audit entry is a change of the models topic: the panel redraws by itself
        page.wait(lambda: page.count("#explain-global tbody tr") == 5, "the global importance table", timeout=60)
        first = max(doc["global"]["families"], key=lambda f: doc["global"]["families"][f]["mean_abs_mgdl"])
        assert page.text("#explain-global tbody tr").startswith(first)
        share = doc["global"]["families"][first]["share"]
        assert f"{100 * share:.1f} %" in page.text("#explain-global tbody tr")
        assert page.count("#explain-local tbody tr") == min(20, doc["local"]["kept"]) > 0
        page.shot("explanations")
