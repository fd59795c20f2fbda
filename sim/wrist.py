"""The model's last mile, checked at the end of a replay: promoted model on every inference-capable device,
a tampered release refused by all of them, a rollback reaching all of them.

Inference-capable devices are those whose firmware profile runs the forecaster; the replay starts their fleets
with `--linger`, so they stay connected after their trace. Their state is read from the fleet status files
(`per_device`: loaded model version and serial, refusals by reason), which mirror what each device publishes
on its retained status topic. Every step waits up to `timeout_s`; a device that never gets there is named.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from device.profiles import DEFAULT_PROFILE, load_profile
from device.tamper import publish_payload, read_retained, tamper
from sim.processes import read_json
from sim.scenario import Scenario

TAMPER_KIND, TAMPER_REASON = "bit-flip", "tampered"


def inference_gateways(s: Scenario) -> list[str]:
    return [g.id for g in s.gateways if load_profile(g.profile or DEFAULT_PROFILE).runs_forecaster]


def device_states(out: Path, gateways: list[str]) -> dict[str, dict]:
    states: dict[str, dict] = {}
    for gw in gateways:
        states.update(read_json(out / f"fleet-{gw}.json").get("per_device") or {})
    return states


def _wait(what: str, ok: Callable[[str, dict], bool], states: Callable[[], dict[str, dict]], timeout_s: float,
          tick: Callable[[], None]) -> tuple[bool, float, list[str]]:
    """(all devices ok, seconds waited, devices still not ok)."""
    t0 = time.time()
    while True:
        tick()
        current = states()
        lagging = sorted(d for d, st in current.items() if not ok(d, st))
        if current and not lagging:
            return True, round(time.time() - t0, 1), []
        if time.time() - t0 > timeout_s:
            return False, round(time.time() - t0, 1), lagging or [f"no inference-capable device reported ({what})"]
        time.sleep(0.5)


def check_release_path(s: Scenario, out: Path, *, broker_port: int, get: Callable[[str], dict],
                       post: Callable[[str, dict], tuple[int, dict]], tick: Callable[[], None], timeout_s: float = 90.0,
                       rollback: bool = True) -> dict:
    """Run the three checks; `get`/`post` reach the cloud as staff, `tick` keeps the replay's processes honest."""
    gateways = inference_gateways(s)
    if not gateways:
        return {"skipped": "no gateway's devices run the forecaster (profile [model] runs_forecaster)"}

    def states() -> dict[str, dict]:
        return device_states(out, gateways)

    promoted = get("/v1/models/promoted")["version"]
    report: dict = {"gateways": gateways, "devices": len(states())}

    ok, secs, lagging = _wait("promoted", lambda _d, st: st.get("model_version") == promoted, states, timeout_s,
                              tick)
    report["promoted"] = {"version": promoted, "reached_all": ok, "seconds": secs, "missing": lagging}

    before = {d: st.get("model_refusals", {}).get(TAMPER_REASON, 0) for d, st in states().items()}
    for gw in gateways:
        good = read_retained(host="127.0.0.1", port=broker_port, gateway=gw)
        publish_payload(tamper(good, TAMPER_KIND), host="127.0.0.1", port=broker_port, gateway=gw)
    ok, secs, lagging = _wait("tampered", lambda d, st: st.get("model_refusals", {}).get(TAMPER_REASON, 0) >
                              before.get(d, 0), states, timeout_s, tick)
    still = all(st.get("model_version") == promoted for st in states().values())
    report["tampered"] = {"kind": TAMPER_KIND, "refused_by_all": ok and still, "seconds": secs, "accepted_by": lagging}

    if rollback:
        status, result = post("/v1/models/rollback", {"reason": "replay: release-path check"})
        if status == 409:  # nothing to roll back to (no promotion replaced an earlier one)
            report["rollback"] = {"skipped": result.get("detail")}
            return report
        target = result["promoted"]
        serials = {d: st.get("model_serial") or 0 for d, st in states().items()}
        ok, secs, lagging = _wait("rollback", lambda d, st: st.get("model_version") == target and
                                  (st.get("model_serial") or 0) > serials.get(d, 0), states, timeout_s, tick)
        report["rollback"] = {"from": result["rolled_back"], "to": target, "reached_all": ok, "seconds": secs,
                              "missing": lagging}
    return report


def passed(report: dict) -> bool:
    """Every check that ran succeeded (a skipped report passes: there was nothing to check)."""
    rollback = report.get("rollback") or {"skipped": "not asked"}
    return "skipped" in report or (report["promoted"]["reached_all"] and report["tampered"]["refused_by_all"]
                                   and ("skipped" in rollback or rollback["reached_all"]))
