"""Submission accepted -> the dashboard showing it: how long a compliance officer waits to see a new epsilon.

A real cloud under uvicorn (in this process), three fake nodes speaking the secure-aggregation protocol
(tests/cloud/participants.py), and the dashboard open in Debian's headless Chromium (Selenium), signed in as the
compliance officer. For every submission the clock starts when the node has the cloud's 200 (the update, its
privacy spend and its audit entry are committed by then) and stops when a MutationObserver in the page sees that
participant's epsilon cell change (both read the same system clock). The peer, measured in the same run: a plain
``GET /v1/dashboard/participants`` of the same data by a client that already knows it should look.

    python -m bench.dashboard_latency [--rounds 5]

Goal (issue 17): under 1 s. The feed polls the ledger every 200 ms, so expect about 100 ms of waiting on average
plus the page's re-read of the participants route.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

OBSERVER = """
window.__seen = {};
const body = document.querySelector('#participants tbody');
const last = {};
new MutationObserver(() => {
  for (const row of body.querySelectorAll('tr[data-participant]')) {
    const pid = row.dataset.participant, text = row.querySelector('.eps').textContent;
    if (last[pid] !== undefined && last[pid] !== text) window.__seen[pid] = Date.now();
    last[pid] = text;
  }
}).observe(body, {childList: true, subtree: true, characterData: true});
for (const row of body.querySelectorAll('tr[data-participant]'))
  last[row.dataset.participant] = row.querySelector('.eps').textContent;
"""


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    from cloud.app import CloudSettings, create_app
    from tests.cloud.participants import ADMIN, COMPLIANCE, FakeNode, open_round, random_delta, wait_state
    from tests.conftest import ADMIN_TOKEN, COMPLIANCE_TOKEN, serve_app, start_chromium

    work = Path(tempfile.mkdtemp(prefix="wearfed-dashboard-bench-"))
    import os

    os.environ["WEARFED_TFLITE_EXPORT"] = "off"
    app = create_app(CloudSettings(db_url=f"sqlite:///{work / 'cloud.db'}", state_dir=work / "cloud",
                                   admin_token=ADMIN_TOKEN, compliance_token=COMPLIANCE_TOKEN,
                                   dev_insecure_custodian=True, tick_seconds=0.1))
    shown: list[float] = []
    plain: list[float] = []
    with serve_app(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        nodes = [FakeNode(http, f"gw-{i}") for i in (1, 2, 3)]
        for n in nodes:
            assert n.enroll().status_code == 201
        driver = start_chromium(work / "profile")
        try:
            driver.get(f"{url}/dashboard")
            driver.find_element("id", "token").send_keys(COMPLIANCE_TOKEN)
            driver.find_element("id", "signin").click()
            deadline = time.time() + 30
            while not driver.execute_script("return window.wfDashboard.loads > 0 && "
                                            "document.querySelectorAll('#participants tr[data-participant]')"
                                            ".length === 3"):
                assert time.time() < deadline, "the dashboard did not load"
                time.sleep(0.05)
            driver.execute_script(OBSERVER)
            for k in range(args.rounds):
                rid = open_round(http)
                base = http.get(f"/v1/rounds/{rid}", headers=ADMIN).json()["base_model_version"]
                for i, node in enumerate(nodes):
                    body = node.submission(rid, random_delta(10 * k + i), n_samples=30, base_version=base)
                    driver.execute_script("delete window.__seen[arguments[0]]", node.id)
                    resp = node.submit(rid, body)
                    accepted = time.time()
                    assert resp.status_code == 200, resp.text
                    t0 = time.perf_counter()
                    assert http.get("/v1/dashboard/participants", headers=COMPLIANCE).status_code == 200
                    plain.append(time.perf_counter() - t0)
                    deadline = time.time() + 10
                    while (seen := driver.execute_script("return window.__seen[arguments[0]]", node.id)) is None:
                        assert time.time() < deadline, f"{node.id}'s epsilon never changed on screen"
                        time.sleep(0.005)
                    shown.append(seen / 1000 - accepted)
                wait_state(http, rid, ("completed",))
        finally:
            driver.quit()
    print(f"submissions: {len(shown)} ({args.rounds} rounds x 3 participants); machine shared with other jobs")
    print(f"submission accepted -> dashboard shows it: median {statistics.median(shown) * 1000:.0f} ms, "
          f"p90 {_pct(shown, 0.9) * 1000:.0f} ms, max {max(shown) * 1000:.0f} ms (goal < 1000 ms)")
    print(f"peer, plain GET /v1/dashboard/participants: median {statistics.median(plain) * 1000:.1f} ms, "
          f"max {max(plain) * 1000:.1f} ms")
    print(f"ratio (median dashboard / median plain GET): {statistics.median(shown) / statistics.median(plain):.1f}x")


if __name__ == "__main__":
    main()
