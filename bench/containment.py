"""Time to containment of a guessed-token burst, intrusion response against the front door's lockout, same run.

Two real `wearfed cloud serve` processes on SQLite: one with intrusion response at its defaults (`cloud/intrusion.py`:
10 failures in 60 s lock the address, 403), the peer with intrusion response switched off for this rule
(``--intrusion-auth-failures 100000``), so only the front door's lockout (`cloud/ratelimit.py`: 20 failures, 429)
stops the burst. Each trial is a burst of guessed bearer tokens from a fresh loopback address (127.0.0.2, .3, ...)
until the first refused answer; timed from just before its first request to that answer.

Prints one line per cloud and the ratio, e.g.
``intrusion: median_s=0.41 ...``, ``front_door_lockout: median_s=0.80 ...``, ``ratio front_door/intrusion=1.95``;
the secure-deployment study's 3.4 s is printed beside them for reference (a published figure, not measured here).

Usage: ``python -m bench.containment [--trials 5]``. Traffic goes to loopback only.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.abuse_probe import serve
from sim.attack_drill import STUDY_SECONDS
from sim.broker import free_port


def burst(url: str, address: str, *, max_requests: int = 200) -> tuple[float, int, int]:
    """(seconds to the first refused answer, requests sent, that answer's status)."""
    with httpx.Client(base_url=url, transport=httpx.HTTPTransport(local_address=address), timeout=30) as http:
        t0 = time.perf_counter()
        for i in range(1, max_requests + 1):
            status = http.get("/v1/participants", headers={"Authorization": f"Bearer wf_guess{i}"}).status_code
            if status in (403, 429):
                return time.perf_counter() - t0, i, status
    raise RuntimeError(f"{max_requests} guessed tokens from {address} were never refused")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    checkout = Path(__file__).resolve().parents[1]
    tmp = Path(tempfile.mkdtemp(prefix="containment-"))
    medians = {}
    for k, (name, extra) in enumerate((("intrusion", ()),
                                       ("front_door_lockout", ("--intrusion-auth-failures", "100000")))):
        port = free_port()
        proc = serve(checkout, tmp / f"state-{k}", tmp / f"cloud-{k}.db", port, *extra)
        try:
            time.sleep(2)
            runs = [burst(f"http://127.0.0.1:{port}", f"127.0.{k + 1}.{t + 2}") for t in range(args.trials)]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        seconds = [r[0] for r in runs]
        medians[name] = statistics.median(seconds)
        print(f"{name}: median_s={medians[name]:.3f} max_s={max(seconds):.3f} requests={[r[1] for r in runs]} "
              f"refused_with={sorted({r[2] for r in runs})} trials={args.trials}", flush=True)
    print(f"ratio front_door/intrusion={medians['front_door_lockout'] / medians['intrusion']:.2f}  "
          f"(secure-deployment study, published: {STUDY_SECONDS} s)", flush=True)


if __name__ == "__main__":
    main()
