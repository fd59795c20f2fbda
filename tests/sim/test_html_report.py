"""report.html: self-contained, one plot per present section, notes (not crashes) for missing or bad sections."""

from __future__ import annotations

import base64
import copy
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from sim.html_report import SECTIONS, render_report, write_report

SECTION_TITLES = [title for title, _ in SECTIONS]
DEMO = Path(__file__).resolve().parents[1] / "data" / "demo_summary.json"  # a real `wearfed demo` summary.json


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.sections: list[str] = []
        self.resources: list[str] = []  # every src/href/url() a browser could fetch
        self.notes = 0
        self._in_h2 = False
        self._in_style = False
        self.styles = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src") or "")
        for key in ("src", "href", "srcset", "poster", "data", "action"):
            if a.get(key):
                self.resources.append(a[key] or "")
        if tag == "h2":
            self._in_h2 = True
            self.sections.append("")
        if tag == "style":
            self._in_style = True
        if tag == "p" and a.get("class") == "note":
            self.notes += 1
        if tag in ("script", "link", "iframe", "object", "embed"):
            self.resources.append(f"<{tag}>")

    def handle_endtag(self, tag: str) -> None:
        self._in_h2 = self._in_h2 and tag != "h2"
        self._in_style = self._in_style and tag != "style"

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.sections[-1] += data
        if self._in_style:
            self.styles += data


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def _full_summary() -> dict:
    s = json.loads(DEMO.read_text())
    rng = np.random.default_rng(1)
    ref = rng.uniform(40, 380, 400)
    for r in s["rounds"]:
        r["linear_rmse30"] = r["persistence_rmse30"] * 1.1
        r["centralised_rmse30"] = r["rmse30"] * 0.8
    pred = (ref * rng.normal(1, 0.15, 400)).clip(0, 399)
    s["clarke_points"] = {"reference": ref.tolist(), "prediction": pred.tolist()}
    s["fleet_timeline"] = [{"t": 1_767_225_600 + 600 * i, "connected": 30 - (i // 10), "buffered": i % 7,
                            "dropped": 0, "battery": 100 - i / 2} for i in range(40)]
    s["faults"] = [{"t": 1_767_226_000, "kind": "broker_outage", "target": "broker", "detail": "60 s"},
                   {"t": 1_767_230_000, "kind": "gateway_crash", "target": "gw-2", "detail": "<SIGKILL> & restart"}]
    return s


def _assert_self_contained(text: str, page: _Page) -> None:
    assert page.resources == [src for src in page.images], page.resources  # only the images' own data: URIs
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert "url(" not in page.styles and "@import" not in page.styles
    for src in page.images:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_summary_renders_with_notes_for_absent_sections(tmp_path: Path) -> None:
    summary = json.loads(DEMO.read_text())
    path = write_report(summary, tmp_path)
    assert path == tmp_path / "report.html"
    text = path.read_text()
    page = _parse(text)
    _assert_self_contained(text, page)
    assert "http://" not in text and "https://" not in text
    # present: rmse, epsilon, bytes/latency; absent: clarke, fleet, faults (a note each); this old summary has no
    # run parameters and no device odometers (a note each on the first screen)
    assert len(page.images) == 3
    assert page.notes == 3
    assert page.sections[:3] == ["Did it work?", "How private?", "How accurate?"]
    assert page.sections[4:] == [*SECTION_TITLES, "Every round in full", "Everything else in summary.json"]
    assert "gw-1" in text and "PRV accountant" in text and "per training window" in text  # epsilon, unit, accountant
    assert "insecure dev custodian" in text


def test_every_section_present_gives_one_plot_each(tmp_path: Path) -> None:
    path = write_report(_full_summary(), tmp_path / "out" / "r.html")
    assert path.name == "r.html"
    text = path.read_text()
    page = _parse(text)
    _assert_self_contained(text, page)
    assert len(page.images) == 6 and page.notes == 0
    assert "&lt;SIGKILL&gt; &amp; restart" in text  # fault details are escaped
    assert "centralised RMSE +30 min (mg/dL)" in text and 'title="centralised_rmse30"' in text and "A+B" in text
    assert "Parkes type 1" in text


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.update(clarke_points={"reference": [100, 200], "prediction": [100]}),
        lambda s: s.update(clarke_points={"reference": [100, -3], "prediction": [100, 100]}),
        lambda s: s.update(fleet_timeline=[{"connected": 3}]),
        lambda s: s.update(faults="broker down"),
        lambda s: s["rounds"][0].update(epsilon={"gw-1": "lots"}),
        lambda s: s["rounds"][1].update(rmse30="n/a"),
        lambda s: s.update(rounds={"1": "completed"}),
    ],
)
def test_malformed_sections_become_notes(tmp_path: Path, mutate) -> None:
    summary = _full_summary()
    mutate(summary)
    text = write_report(summary, tmp_path).read_text()
    page = _parse(text)
    _assert_self_contained(text, page)
    assert "could not be drawn" in text
    assert len(page.sections) == 4 + len(SECTION_TITLES) + 2


def test_minimal_and_failed_rounds() -> None:
    assert "No rounds" in render_report({})
    s = copy.deepcopy(json.loads(DEMO.read_text()))
    s["rounds"][1].update(state="failed", failure_reason="quorum not met", model_version=None, rmse30=None,
                          rmse60=None)
    text = render_report(s)
    assert "no model: quorum not met" in text and ">failed (no model)</td>" in text
    with pytest.raises(TypeError):
        render_report(["not", "a", "dict"])  # type: ignore[arg-type]


def test_rendering_is_deterministic() -> None:
    s = _full_summary()
    assert render_report(s) == render_report(copy.deepcopy(s))


def test_first_screen_of_a_run_whose_rounds_were_all_promoted() -> None:
    s = json.loads(DEMO.read_text())  # an older real demo summary: every round's model promoted
    text = render_report(s)
    first = text.split('<div id="first-screen">', 1)[1].split("<h2>Forecast error", 1)[0]
    n = len(s["rounds"])
    assert f"Yes: {n} of {n} rounds produced a model; {n} promoted to production, 0 held back." in first
    last = s["rounds"][-1]
    assert f"In production at the end: model v{last['model_version']}" in first
    assert f"<b>{last['rmse30']:,.2f}</b></td><td>{last['persistence_rmse30']:,.2f}</td>" in first
    assert "No model in production" not in first and "held back because" in first  # the column, empty here
