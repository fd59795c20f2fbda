"""`wearfed hospital run --data PATH`: the same participant loop, trained on local clinical CGM traces.

The data file is a CSV with a header `patient,time,glucose` (time in unix seconds, glucose in mg/dL). With
`--eval-holdout-patients K` K patients spread over the sorted ids never enter training: they are the hospital's local
held-out set for federated evaluation. Each new candidate model a round produces is fetched, scored on those
patients (`federation.evaluation.score_windows`) and only the scores are posted, signed with the node's key
(POST /v1/models/{version}/evaluations). Versions already scored are remembered in `evaluated.json`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.errors import SchemaError
from federation.evaluation import EVALUATION_DOMAIN, score_windows
from federation.signing import sign
from federation.windows import windows_from_series
from gateway.cloud_client import CloudClient, CloudRejected
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


def split_holdout(series: dict[str, tuple[np.ndarray, np.ndarray]], holdout: int
                  ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(training, held-out) patients: `holdout` ids evenly spaced over the sorted ids (not the last ones: ids sort
    by age group, and a held-out set of one group only would judge every model on its hardest patients)."""
    if holdout < 0 or (holdout and holdout >= len(series)):
        raise SchemaError(f"--eval-holdout-patients {holdout}: must be 0..{len(series) - 1} "
                          f"(this file has {len(series)} patients)")
    ids = sorted(series)
    held = {ids[(2 * i + 1) * len(ids) // (2 * holdout)] for i in range(holdout)}
    return ({p: v for p, v in series.items() if p not in held}, {p: v for p, v in series.items() if p in held})


class FederatedEvaluator:
    """Round hook: score each new candidate on the local held-out windows and post the signed scores."""

    STATES = ("completed", "evaluated", "staged", "promoted")

    def __init__(self, participant_id: str, key: Ed25519PrivateKey, x: np.ndarray, y: np.ndarray,
                 state_dir: Path) -> None:
        self.participant_id, self.key, self.x, self.y = participant_id, key, x, y
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "evaluated.json"
        self.done: dict[str, str] = json.loads(self.path.read_text()) if self.path.exists() else {}

    async def __call__(self, rnd: dict, cloud: CloudClient) -> None:
        version = rnd.get("result_model_version")
        if version is None or rnd.get("state") not in self.STATES or str(version) in self.done:
            return
        model = (await cloud.request("GET", f"/v1/models/{version}")).json()
        weights = np.frombuffer(base64.b64decode(model["weights"]), dtype=np.float32)
        try:
            scores = await asyncio.to_thread(score_windows, weights, self.x, self.y)
        except SchemaError as exc:
            self._remember(version, f"not scored: {exc}")
            log.error("%s: model v%s not evaluated: %s", self.participant_id, version, exc)
            return
        doc = {"participant": self.participant_id, "model_version": version, "model_hash": model["hash"],
               "metrics": scores}
        try:
            await cloud.request("POST", f"/v1/models/{version}/evaluations",
                                json={**doc, "signature": sign(self.key, doc, domain=EVALUATION_DOMAIN)})
        except CloudRejected as exc:
            self._remember(version, f"rejected: {exc.reason}")
            log.error("%s: evaluation of v%s rejected: %s", self.participant_id, version, exc)
            return
        self._remember(version, "posted")
        log.info("%s: evaluated v%s on %d local held-out windows: rmse30 %.2f", self.participant_id, version,
                 len(self.x), scores["rmse30"])

    def _remember(self, version: int, outcome: str) -> None:
        self.done[str(version)] = outcome
        write_json_atomic(self.path, self.done)


async def run_hospital(cfg: NodeConfig, data: Path, *, eval_holdout: int = 0) -> None:
    """Take part in rounds on the clinical traces until SIGTERM; `status.json` in the state dir every second.

    With `eval_holdout` > 0, that many patients are kept out of training and score every candidate model.
    """
    series, held = split_holdout(load_clinical_csv(data), eval_holdout)
    x, y = windows_from_series(series.values())
    log.info("hospital %s: %d patients, %d windows from %s", cfg.participant_id, len(series), len(x), data)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    # Clinical data is historical: every window is available to every round.
    node = ParticipantNode(cfg, lambda _cutoff: (x, y))
    if held:
        hx, hy = windows_from_series(held.values())
        node.on_round = FederatedEvaluator(cfg.participant_id, node.key, hx, hy, cfg.state_dir)
        log.info("hospital %s: %d held-out patients, %d windows for federated evaluation", cfg.participant_id,
                 len(held), len(hx))
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
