"""report.html in a real browser: Debian's Chromium (Selenium, /usr/bin/chromedriver) opens the report rendered from a
real run's summary and its first screen (1440 x 900 window) must show the answers: did it work, how private (device
and node epsilons with their units), how accurate (RMSE against persistence), what was held back and why.

The summary (tests/data/report_summary.json) is a real reduced demo, unedited:
`wearfed demo --out DIR --gateways 2 --devices-per-gateway 3 --hospitals 1 --rounds 3 --days 1` (seed 7). Every
round's model was held back by the Clarke gate on the hospital's patients. A screenshot of the first screen lands in
the test's tmp_path; with WEARFED_DOCS_IMG=1 it is also written to docs/img/report-first-screen.png.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from selenium.webdriver.common.by import By

from sim.html_report import write_report

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "tests" / "data" / "report_summary.json"
DOCS_IMG = ROOT / "docs" / "img" / "report-first-screen.png"


def _fmt(v: float) -> str:
    return f"{v:,.2f}"


def test_first_screen_answers_the_researchers_questions(browser, tmp_path: Path) -> None:
    summary = json.loads(REAL.read_text())
    page = write_report(summary, tmp_path / "run")
    browser.set_window_size(1440, 900)
    browser.get(page.as_uri())
    height = browser.execute_script("return window.innerHeight")
    first = browser.find_element(By.ID, "first-screen")
    rect = browser.execute_script("return arguments[0].getBoundingClientRect().toJSON()", first)
    assert rect["top"] >= 0 and rect["bottom"] <= height, (rect, height)  # all of it on the first screen
    shot = tmp_path / "report-first-screen.png"
    assert browser.save_screenshot(str(shot))
    if os.environ.get("WEARFED_DOCS_IMG") == "1":
        shutil.copyfile(shot, DOCS_IMG)
    text = " ".join(first.text.split())  # what the browser renders, whitespace folded

    # did it work: every round produced a model, none promoted, each held back
    rounds = summary["rounds"]
    assert all(r["model_version"] is not None and r["gates_failed"] for r in rounds)
    n = len(rounds)
    assert f"{n} of {n} rounds produced a model; 0 promoted to production, {n} held back" in text, text
    assert f"{summary['readings']['published']:,} published by the devices" in text and "0 lost" in text

    # how private: device LDP with its unit (what the odometers charged per patient-day), node DP-SGD per patient
    devs = summary["device_privacy"]["gateways"]
    assert len({d["max_per_patient_day"] for d in devs.values()}) == 1  # one line for gateways that spent alike
    assert (f"Devices {', '.join(devs)} ({sum(d['devices'] for d in devs.values())}, local DP hybrid): event-level "
            "ε 8 per reading") in text, text
    assert f"spent at most ε {devs['gw-1']['max_per_patient_day']:,.0f} per patient-day" in text, text
    assert "ε per patient over the whole training run (all its rounds), δ 1e-05, PRV accountant, cap 10.0" in text
    for p, eps in rounds[-1]["epsilon"].items():
        assert eps["unit"] == "patient"
        assert f"{p} {_fmt(eps['value'])}" in text, (p, text)

    # how accurate: the newest model (none reached production) against persistence at both horizons
    last = rounds[-1]
    assert "No model in production" in text and f"Newest model: model v{last['model_version']}" in text
    for h in (30, 60):
        row = re.search(rf"\+{h} min ([\d.,]+) ([\d.,]+) ([\d.]+)% (lower|higher)", text)
        assert row, text
        assert row[1] == _fmt(last[f"rmse{h}"]) and row[2] == _fmt(last[f"persistence_rmse{h}"])
        change = 100 * (last[f"rmse{h}"] - last[f"persistence_rmse{h}"]) / last[f"persistence_rmse{h}"]
        assert float(row[3]) == round(abs(change), 1) and row[4] == ("lower" if change < 0 else "higher")

    # what was held back and why: the gate in plain words, with the scores it judged, for each round
    for r in rounds:
        detail = r["gates_failed"].split(": ", 1)[1]  # e.g. "Clarke A+B 93.63 % < 95.0 %"
        assert (f"too few +30 min forecasts in Clarke zones A+B on hospitals' held-out patients (federated "
                f"evaluation) ({detail})") in text, text
        for source in ("posted", "federated", "validation"):
            assert _fmt(r["metrics_by_source"][source]["rmse30"]) in text, (source, text)
    # run parameters on the same screen
    assert "scenario demo, seed 7" in text and "3 rounds, quorum 3" in text and "DP-SGD noise multiplier 1.3" in text

    # the plots below are drawn (decoded by the browser), the full table is folded away
    sizes = browser.execute_script("return [...document.images].map(i => i.complete ? i.naturalWidth : 0)")
    assert len(sizes) >= 5 and all(w > 300 for w in sizes), sizes
    details = browser.find_element(By.ID, "all-rounds")
    assert details.get_attribute("open") is None
    grids = browser.find_element(By.XPATH, "//h2[starts-with(., 'Clinical accuracy')]/following-sibling::p[1]")
    assert f"model v{last['model_version']} (round {last['round']}, held back by a gate), +30 min forecasts against " \
           "true blood glucose" in grids.get_attribute("textContent")
