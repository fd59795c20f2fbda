"""Attack (issue 13, item 5): implausible DP reports, against a real cloud.

Before: a participant declaring (noise 1000, 1 step) or (noise 0.3, q 1e-9) was accepted and booked at epsilon ~0.01:
only the arithmetic of the report was checked. Now each declared step is checked against the round (steps = local
epochs / q, as an honest node plans them), the expected batch q x n_samples, n_samples bounds and the noise band;
what does not fit is refused with the check's name, audited, and its envelope quarantined.
"""

from __future__ import annotations

import httpx
import pytest

from cloud.dp_plausibility import DPPolicy, ImplausibleReport, check_plausible
from federation import dp_accounting
from federation.wire import DPReport
from tests.cloud.participants import ADMIN, COMPLIANCE, STEP, FakeNode, assert_reason, open_round, random_delta


def _report(sigma: float, q: float, steps: int, *, unit: str = "patient") -> DPReport:
    eps = dp_accounting.epsilon([(sigma, q, steps)], accountant="rdp")
    return DPReport(noise_multiplier=sigma, sample_rate=q, steps=steps, accountant="rdp", delta=1e-5, unit=unit,
                    epsilon_round=eps, epsilon_cumulative=eps, history=[[sigma, q, steps]])


def _rejections(http: httpx.Client) -> list[dict]:
    entries = http.get("/v1/audit/entries", headers=COMPLIANCE, params={"limit": 1000}).json()
    return [e["detail"] for e in entries if e["kind"] == "update.rejected"]


@pytest.mark.parametrize(("step", "n_samples", "check"), [
    ((1000.0, 1.0, 1), 50, "dp_noise_ceiling"),  # the first attack: noise swamps the update
    ((0.3, 1e-9, 1), 50, "dp_noise_floor"),  # the second attack
    ((1.0, 0.1, 1), 50, "dp_steps"),  # one step where two epochs at q 0.1 take 20
])
def test_an_implausible_report_is_refused_named_and_audited(http: httpx.Client, nodes: list[FakeNode],
                                                            step: tuple, n_samples: int, check: str) -> None:
    rid = open_round(http)  # two local epochs
    node = nodes[0]
    body = node.submission(rid, random_delta(0), n_samples=n_samples, step=step)
    assert_reason(node.submit(rid, body), 400, f"implausible DP report ({check})")
    refused = _rejections(http)[-1]
    assert refused["status"] == 400 and check in refused["reason"] and refused["round"] == rid
    ledger = {a["participant"]: a for a in http.get("/v1/privacy/ledger", headers=COMPLIANCE).json()}
    assert ledger["gw-1"]["entries"] == [] and ledger["gw-1"]["epsilon_spent"] == 0  # nothing booked
    # the honest step still goes through in the same round (the refused envelope was never stored as an update)
    ok = node.submit(rid, node.submission(rid, random_delta(0), n_samples=n_samples, step=STEP))
    assert ok.status_code == 200, ok.text


def test_the_refused_envelope_is_quarantined_as_evidence(cloud, http: httpx.Client,  # noqa: ANN001
                                                         nodes: list[FakeNode]) -> None:
    rid = open_round(http)
    body = nodes[1].submission(rid, random_delta(1), n_samples=50, step=(1000.0, 1.0, 1))
    assert nodes[1].submit(rid, body).status_code == 400
    cloud.app.state.cloud.intrusion.flush()
    q = http.get("/v1/intrusion", headers=COMPLIANCE).json()["quarantine"]
    assert [(x["round"], x["participant"], x["rule"]) for x in q] == [
        (rid, "gw-2", "implausible_reports:dp_noise_ceiling")]
    assert q[0]["ciphertext_sha256"] == body["envelope"]["ciphertext_sha256"]
    assert http.get("/v1/intrusion", headers=ADMIN).status_code == 403  # the compliance officer's and auditors'


def test_real_node_plans_are_plausible() -> None:
    """What `gateway.trainer.plan_steps` gives an honest node passes, for patients and windows, many sizes."""
    from gateway.trainer import DPConfig, plan_steps

    for unit in ("patient", "window"):
        for batch in (1, 8, 64, 256):
            cfg = DPConfig(expected_batch_size=batch, unit=unit)
            for n in (1, 3, 10, 63, 64, 65, 1000, 123_457):
                for epochs in (1, 2, 5):
                    q, steps = plan_steps(n, cfg=cfg, epochs=epochs)
                    check_plausible(_report(1.0, q, steps, unit=unit), n_samples=n, epochs=epochs, policy=DPPolicy())


@pytest.mark.parametrize(("report", "n", "check"), [
    (_report(1.0, 1.0, 1), 2_000_000, "dp_n_samples"),  # more patients than the bound
    (_report(1.0, 0.5, 2, unit="window"), 400_000_000, "dp_n_samples"),
    (_report(0.49, 0.5, 2), 10, "dp_noise_floor"),
    (_report(1.0, 1e-9, 2), 50, "dp_expected_batch"),  # q 1e-9 with an honest noise: nobody is ever sampled
    (_report(1.0, 0.5, 2, unit="window"), 50_000_000, "dp_expected_batch"),  # 25 million windows a step
    (_report(1.0, 0.1, 1), 50, "dp_steps"),  # one step where an epoch at q 0.1 takes 10
    (_report(1.0, 0.1, 100), 50, "dp_steps"),  # ten times too many steps: not what the round asked either
])
def test_bounds(report: DPReport, n: int, check: str) -> None:
    with pytest.raises(ImplausibleReport) as err:
        check_plausible(report, n_samples=n, epochs=1, policy=DPPolicy())
    assert err.value.check == check and err.value.status == 400
