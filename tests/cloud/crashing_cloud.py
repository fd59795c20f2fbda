"""Test-only launcher: `python -m tests.cloud.crashing_cloud POINT cloud serve ...` runs the real `wearfed` command
with one cloud method wrapped to SIGKILL the process at POINT, as `kill -9` would, so restart tests are deterministic.
The hooks live here, not in production code.

POINT: ``after-update:N`` (right after the N-th update of a round is committed, before the round may close),
``aggregating`` (as the worker starts summing), ``decrypting`` (as the worker starts decrypting).
``late-claim:S`` does not crash: the aggregation worker waits S seconds before it tries to claim a round, so that
another replica claims it first (tests/cloud/test_replicas.py).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time

from cloud.aggregation import Aggregation
from cloud.submissions import Submissions
from federation.cli import main


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str) -> None:
    if point.startswith("after-update:"):
        n = int(point.split(":", 1)[1])
        accept = Submissions.accept

        accepted: dict[int, int] = {}  # round -> updates committed in this process

        @functools.wraps(accept)
        def accept_then_die(self, round_id, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            result = accept(self, round_id, *args, **kwargs)  # committed when it returns
            accepted[round_id] = accepted.get(round_id, 0) + 1
            if accepted[round_id] == n:
                _die()
            return result

        Submissions.accept = accept_then_die
    elif point in ("aggregating", "decrypting"):
        name = "aggregate" if point == "aggregating" else "decrypt"
        original = getattr(Aggregation, name)

        @functools.wraps(original)
        def die_first(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            _die()
            return original(self, *args, **kwargs)

        setattr(Aggregation, name, die_first)
    elif point.startswith("late-claim:"):
        delay = float(point.split(":", 1)[1])
        advance = Aggregation.advance

        @functools.wraps(advance)
        def late_advance(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            time.sleep(delay)
            return advance(self, *args, **kwargs)

        Aggregation.advance = late_advance
    else:
        raise SystemExit(f"unknown crash point {point!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
