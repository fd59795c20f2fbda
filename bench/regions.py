"""The cloud's own work per round with and without region relays (hierarchical aggregation), at 5 and 50 participants,
same run: the direct path is the peer every regional figure is divided by.

A real aggregator (uvicorn on loopback, SQLite, the insecure dev custodian so a round decrypts without custodians)
runs one masked round per configuration; participants are `tests.cloud.participants.FakeNode`s (real keys, real
secure aggregation, real CKKS; updates are given, nothing is trained: this measures the aggregator, not training).
With regions, the participants are dealt round-robin into R regions; each region's aggregate is built exactly as
`cloud.region_relay` builds it (`ckks.sum_encrypted` in participant order, `federation.region` statement, signed) and
posted to the cloud. The cloud's work is measured inside the cloud process by timing its own units (each wrapped
here, nothing else changed): submission checks and storing (`Submissions.submit`, or `Regions.submit` and
`Regions.answer_audit`: signatures, DP reports, privacy ledger, ciphertext parsing), the homomorphic sum
(`Aggregation.aggregate`), the custodian's checks and decryption (`Custodian.decrypt_aggregate`) and unmasking
(`SecureAggregation.unmask`). Secure aggregation's phase messages (keys, shares, consistency, unmask) are the same
on both paths and reported apart. Submissions are sent one at a time, so the timed calls do not overlap. The region
audit rate is 0 (set `--audit-rate 1` for the worst case: every aggregate's inputs are posted and re-summed). A
first, unreported round warms the process up. Round wall time is reported too, but here it is dominated by secure
aggregation's message phases driven by one test process, not by anything regions change.

    PYTHONPATH=$PWD python -m bench.regions [--sizes 5,50] [--regions 5] [--audit-rate 0]

Last lines: per size, `regions: participants=<n> direct_work_s=<s> regional_work_s=<s> ratio=<regional/direct>` and
`regions: growth_50_over_5 direct=<x> regional=<x>` (the cloud's work at the largest size over the smallest).
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import httpx

from federation import ckks

STAGES = {"checks": ("submissions.submit", "regions.submit", "regions.answer_audit"), "sum": ("aggregation.aggregate",),
          "decrypt": ("custodian.decrypt_aggregate",), "unmask": ("aggregation.unmask",)}


class Timer:
    """Seconds spent inside wrapped methods, by name."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)

    def wrap(self, obj: object, attr: str, name: str) -> None:
        fn: Callable = getattr(obj, attr)

        @functools.wraps(fn)
        def timed(*args: object, **kwargs: object) -> object:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[name] += time.perf_counter() - t0

        setattr(obj, attr, timed)


def start_cloud(state: Path):  # noqa: ANN201 - (context manager, url, cloud units)
    from cloud.app import CloudSettings, create_app
    from cloud.intrusion import RULES, IntrusionConfig
    from cloud.throttle import Limits
    from tests.conftest import ADMIN_TOKEN, COMPLIANCE_TOKEN, serve_app

    settings = CloudSettings(db_url=f"sqlite:///{state / 'cloud.db'}", state_dir=state / "cloud-state",
                             admin_token=ADMIN_TOKEN, compliance_token=COMPLIANCE_TOKEN, dev_insecure_custodian=True,
                             tick_seconds=0.1, limits=Limits(requests_per_s=0, auth_failures=10**9),
                             intrusion=IntrusionConfig(**dict.fromkeys(RULES, 10**9)))
    app = create_app(settings)
    return serve_app(app), app.state.cloud


def instrument(cloud) -> Timer:  # noqa: ANN001 - cloud.assembly.Cloud
    timer = Timer()
    timer.wrap(cloud.submissions, "submit", "submissions.submit")
    timer.wrap(cloud.regions, "submit", "regions.submit")
    timer.wrap(cloud.regions, "answer_audit", "regions.answer_audit")
    timer.wrap(cloud.aggregation, "aggregate", "aggregation.aggregate")
    timer.wrap(cloud.aggregation, "unmask", "aggregation.unmask")
    timer.wrap(cloud.keys.custodian, "decrypt_aggregate", "custodian.decrypt_aggregate")
    for attr in ("post_keys", "post_shares", "post_consistency", "post_unmask", "view"):
        timer.wrap(cloud.secagg_messages, attr, f"secagg.{attr}")
    # inside the checks: what each costs (nested in the stages above, reported as `checks_detail`)
    for attr in ("check_envelope", "check_privacy", "store_update"):
        timer.wrap(cloud.submissions, attr, f"detail.{attr}")
    timer.wrap(ckks, "check", "detail.ckks_parse")
    return timer


def one_round(n: int, regions: int, audit_rate: float) -> dict:
    """One masked round of `n` participants, direct (regions = 0) or through `regions` regions, on a fresh cloud."""
    from tests.cloud.participants import FakeNode, open_round, random_delta, wait_state
    from tests.cloud.regions import aggregate_body, blob_of, enroll_region, inputs_body

    with tempfile.TemporaryDirectory() as tmp:
        serving, cloud = start_cloud(Path(tmp))
        with serving as url, httpx.Client(base_url=url, timeout=120) as http:
            cloud.regions.audit_rate = audit_rate
            nodes = [FakeNode(http, f"p-{i:03d}") for i in range(n)]
            for node in nodes:
                assert node.enroll().status_code == 201
            keys = {f"r-{k}": enroll_region(http, f"r-{k}") for k in range(regions)}
            ctx = ckks.load_context(http.get("/v1/context").content)
            timer = instrument(cloud)
            t0 = time.perf_counter()
            rid = open_round(http, quorum=3)
            relay_s = 0.0
            groups: dict[str | None, list[dict]] = defaultdict(list)
            for i, node in enumerate(nodes):
                where = f"r-{i % regions}" if regions else None
                body = node.submission(rid, random_delta(i), n_samples=50 + i, region=where)
                if where is None:
                    assert node.submit(rid, body).status_code == 200
                groups[where].append(body)
            for where, members in groups.items():
                if where is None:
                    continue
                r0 = time.perf_counter()  # the relay's own work: the sum and its signature
                agg = aggregate_body(keys[where], where, rid, members, ctx=ctx)
                relay_s += time.perf_counter() - r0
                ack = http.post(f"/v1/rounds/{rid}/region-aggregates", json=agg)
                assert ack.status_code == 200, ack.text
                if ack.json()["status"] == "audit":
                    sha = agg["statement"]["aggregate_sha256"]
                    inputs = {m["envelope"]["participant"]: blob_of(m) for m in members}
                    answer = http.post(f"/v1/rounds/{rid}/region-aggregates/{sha}/inputs",
                                       json=inputs_body(keys[where], where, rid, sha, inputs))
                    assert answer.status_code == 200, answer.text
            report = wait_state(http, rid, ("completed", "failed"), timeout=900)
            wall = time.perf_counter() - t0
            assert report["state"] == "completed", report
    stages = {stage: sum(timer.spent[name] for name in names) for stage, names in STAGES.items()}
    secagg_s = sum(v for k, v in timer.spent.items() if k.startswith("secagg."))
    detail = {k.removeprefix("detail."): round(v, 4) for k, v in timer.spent.items() if k.startswith("detail.")}
    return {"participants": n, "regions": regions, "work_s": sum(stages.values()), **{f"{k}_s": v for k, v in
            stages.items()}, "secagg_messages_s": secagg_s, "relay_sum_s": relay_s, "round_wall_s": wall,
            "checks_detail": detail}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="5,50", help="participant counts")
    parser.add_argument("--regions", type=int, default=5, help="regions of the regional path")
    parser.add_argument("--audit-rate", type=float, default=0.0, help="share of region aggregates audited")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    sizes = [int(x) for x in args.sizes.split(",")]
    one_round(min(sizes), 0, args.audit_rate)  # warm-up, not reported: imports, accountant and JIT caches
    rows: dict[tuple[int, str], dict] = {}
    for n in sizes:
        for mode, r in (("direct", 0), ("regional", args.regions)):
            rows[(n, mode)] = row = one_round(n, r, args.audit_rate)
            print(json.dumps({"mode": mode, **{k: round(v, 4) if isinstance(v, float) else v
                                               for k, v in row.items()}}), flush=True)
    for n in sizes:
        d, g = rows[(n, "direct")]["work_s"], rows[(n, "regional")]["work_s"]
        print(f"regions: participants={n} regions={args.regions} direct_work_s={d:.3f} regional_work_s={g:.3f} "
              f"ratio={g / d:.3f}")
    lo, hi = min(sizes), max(sizes)
    for key, label in (("work_s", "cloud work"), ("round_wall_s", "round wall time")):
        d = rows[(hi, "direct")][key] / rows[(lo, "direct")][key]
        g = rows[(hi, "regional")][key] / rows[(lo, "regional")][key]
        print(f"regions: {label} growth_{hi}_over_{lo} direct={d:.2f}x regional={g:.2f}x")


if __name__ == "__main__":
    main()
