"""`wearfed hospital run --data PATH`: the same participant loop, trained on local clinical CGM traces.

The data file is a CSV with a header `patient,time,glucose` (time in unix seconds, glucose in mg/dL).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import logging
import os
import time
from pathlib import Path

import numpy as np

from federation.errors import SchemaError
from federation.windows import windows_from_series
from gateway.daemon import install_stop_signals, stop_node, write_json_atomic
from gateway.node import NodeConfig, ParticipantNode

log = logging.getLogger(__name__)
COLUMNS = ("patient", "time", "glucose")


def load_clinical_csv(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read `patient,time,glucose` rows; raises SchemaError naming the line of the first bad row."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise SchemaError(f"{path}: header must be {','.join(COLUMNS)}, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                t, g = int(row["time"]), float(row["glucose"])
            except (TypeError, ValueError) as exc:
                raise SchemaError(f"{path}:{line}: bad row {row}") from exc
            if not 10 <= g <= 1000:
                raise SchemaError(f"{path}:{line}: glucose {g} mg/dL out of range")
            ts, gs = series.setdefault(row["patient"], ([], []))
            ts.append(t)
            gs.append(g)
    return {p: (np.asarray(ts, dtype=np.int64), np.asarray(gs)) for p, (ts, gs) in series.items()}


def write_clinical_csv(path: Path, series: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for patient, (times, values) in series.items():
            w.writerows((patient, int(t), round(float(v), 1)) for t, v in zip(times, values, strict=True))


async def run_hospital(cfg: NodeConfig, data: Path) -> None:
    """Take part in rounds on the clinical traces until SIGTERM; `status.json` in the state dir every second."""
    series = load_clinical_csv(data)
    x, y = windows_from_series(series.values())
    log.info("hospital %s: %d patients, %d windows from %s", cfg.participant_id, len(series), len(x), data)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    # Clinical data is historical: every window is available to every round.
    node = ParticipantNode(cfg, lambda _cutoff: (x, y))
    stop = asyncio.Event()
    install_stop_signals(stop)

    def status() -> dict:
        return {"updated": time.time(), "kind": "hospital", "pid": os.getpid(), "data": str(data),
                "patients": len(series), "windows": len(x), **node.status()}

    async def report() -> None:
        while True:
            write_json_atomic(cfg.state_dir / "status.json", status())
            await asyncio.sleep(1.0)

    reporter = asyncio.create_task(report())
    node_task = asyncio.create_task(node.run(stop))
    await stop.wait()
    log.info("hospital %s stopping", cfg.participant_id)
    await stop_node(node_task, node)
    reporter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reporter
    write_json_atomic(cfg.state_dir / "status.json", {**status(), "stopped": True})
    await node.aclose()
