"""`wearfed hospital run --data PATH`: the same participant loop, trained on local clinical CGM traces.

The data file is a CSV with a header `patient,time,glucose,insulin,carbs` (format: `gateway.clinical_csv`; time ISO
8601, unix seconds or milliseconds; glucose mg/dL, or mmol/L declared). Readings are resampled onto the 5-min grid
(`federation.windows.resample`); a file that gives no training window is refused before enrollment, and
`wearfed hospital check` says what a file gives without enrolling. Files with the old header `patient,time,glucose`
still load, with a warning: the model then sees no insulin or carbs for those patients (`events_known` = 0). With
`--eval-holdout-patients K` K patients spread over the sorted ids never enter training: they are the hospital's local
held-out set for federated evaluation. Each new candidate model a round produces is fetched, scored on those
patients (`federation.evaluation.score_windows`) and only the scores are posted, signed with the node's key
(POST /v1/models/{version}/evaluations). Versions already scored are remembered in `evaluated.json`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.errors import SchemaError
from federation.evaluation import EVALUATION_DOMAIN, score_windows
from federation.model import GRID_SECONDS, HISTORY_STEPS, HORIZON_STEPS
from federation.responses import ModelView, PublicRound
from federation.signing import sign
from federation.status import HospitalStatus
from federation.windows import RESAMPLE_MAX_SPAN_S, Resampled, SeriesLike, resample, windows_from_series
from gateway.clinical_csv import (  # noqa: F401 - re-exported: the file format's home is gateway.clinical_csv
    COLUMNS,
    ClinicalData,
    load_clinical_csv,
    read_clinical_csv,
    write_clinical_csv,
)
from gateway.cloud_client import CloudClient, CloudRejected
from gateway.consent import send_reports
from gateway.daemon import install_stop_signals, stop_node, write_json_atomic
from gateway.hospital_consent import HospitalConsent
from gateway.node import NodeConfig, ParticipantNode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataCheck:
    """What `wearfed hospital check` prints: the file as the node would train on it."""

    data: ClinicalData
    resampled: dict[str, Resampled]
    windows: int

    def lines(self, path: Path) -> list[str]:
        r = list(self.resampled.values())
        readings, off = sum(x.readings for x in r), sum(x.off_grid for x in r)
        dups, gaps = sum(x.duplicates for x in r), sum(x.gaps for x in r)
        events = sum(s.insulin_times.size + s.carb_times.size for s in self.data.series.values())
        methods = sorted({x.method for x in r if x.readings})
        return [f"{path}: {self.data.rows} rows, time format {self.data.time_format}, glucose {self.data.unit}",
                f"patients: {len(self.data.series)}; glucose readings: {readings}; insulin/carb events: {events}",
                f"resampled onto the 5-min grid ({', '.join(methods) or 'nothing to resample'}): {off} readings off "
                f"the grid moved by interpolation (spans up to {RESAMPLE_MAX_SPAN_S} s), {dups} duplicate "
                "timestamps averaged",
                f"gaps: {gaps} (runs of grid points with no reading within {RESAMPLE_MAX_SPAN_S} s around them)",
                f"training windows (2 h history, +30/+60 min targets): {self.windows}"]


def check_clinical_data(path: Path) -> DataCheck:
    """Read a hospital data file and build its windows as `hospital run` would; SchemaError if it gives none."""
    data = read_clinical_csv(path)
    resampled = {p: resample(s.times, s.glucose) for p, s in data.series.items()}
    windows = len(windows_from_series(data.series, resampled=True))
    if windows == 0:
        raise SchemaError(f"{path}: {len(data.series)} patients but 0 training windows: each needs "
                          f"{(HISTORY_STEPS + max(HORIZON_STEPS)) * GRID_SECONDS // 60} min of readings without a "
                          f"gap (neighbouring readings at most {RESAMPLE_MAX_SPAN_S} s apart)")
    return DataCheck(data, resampled, windows)


def split_holdout(series: dict[str, SeriesLike], holdout: int
                  ) -> tuple[dict[str, SeriesLike], dict[str, SeriesLike]]:
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

    async def __call__(self, rnd: PublicRound | None, cloud: CloudClient) -> None:
        version = None if rnd is None else rnd.result_model_version
        if rnd is None or version is None or rnd.state not in self.STATES or str(version) in self.done:
            return
        try:  # a candidate is served to enrolled participants only: the node's reads are signed
            model = ModelView.model_validate((await cloud.request("GET", f"/v1/models/{version}")).json())
        except (CloudRejected, ValueError) as exc:  # ValueError: not a model view (pydantic)
            self._remember(version, f"rejected: {getattr(exc, 'reason', exc)}")
            log.error("%s: model v%s not readable: %s", self.participant_id, version, exc)
            return
        weights = np.frombuffer(base64.b64decode(model.weights), dtype=np.float32)
        try:
            scores = await asyncio.to_thread(score_windows, weights, self.x, self.y)
        except SchemaError as exc:
            self._remember(version, f"not scored: {exc}")
            log.error("%s: model v%s not evaluated: %s", self.participant_id, version, exc)
            return
        doc = {"participant": self.participant_id, "model_version": version, "model_hash": model.hash,
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
    consent = HospitalConsent(cfg.state_dir)
    clinical = check_clinical_data(data).data.series  # refused by name when it gives no training window
    split_holdout(clinical, eval_holdout)  # a bad --eval-holdout-patients is refused at start, by name
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    current: dict = {}

    def derive() -> None:
        """Training and held-out windows from the patients who have not withdrawn (rebuilt after a withdrawal)."""
        kept = consent.keep(clinical)
        series, held = split_holdout(kept, eval_holdout if eval_holdout < len(kept) else 0)
        current.update(series=series, held=held, windows=windows_from_series(series, resampled=True),
                       mtime=consent.mtime(), withdrawn=len(clinical) - len(series) - len(held))
        if held and node.on_round is not None:
            node.on_round.x, node.on_round.y = windows_from_series(held, resampled=True)

    # Clinical data is historical: every window is available to every round.
    node = ParticipantNode(cfg, lambda _cutoff: current["windows"])
    derive()
    if not len(current["windows"]):
        raise SchemaError(f"{data}: no training windows left after holding out {eval_holdout} patients")
    log.info("hospital %s: %d patients, %d windows from %s (%d withdrawn)", cfg.participant_id,
             len(current["series"]), len(current["windows"]), data, current["withdrawn"])
    held = current["held"]
    if held:
        hx, hy = windows_from_series(held, resampled=True)
        node.on_round = FederatedEvaluator(cfg.participant_id, node.key, hx, hy, cfg.state_dir)
        log.info("hospital %s: %d held-out patients, %d windows for federated evaluation", cfg.participant_id,
                 len(held), len(hx))
    stop = asyncio.Event()
    install_stop_signals(stop)

    def status() -> HospitalStatus:
        return HospitalStatus(updated=time.time(), pid=os.getpid(), data=str(data),
                              patients=len(current["series"]) + len(current["held"]), windows=len(current["windows"]),
                              withdrawn_patients=current["withdrawn"],
                              consent_reports_pending=len(consent.pending_reports()), **node.status())

    async def report() -> None:
        while True:
            if consent.mtime() != current["mtime"]:  # `wearfed hospital withdraw` wrote a tombstone
                derive()
                log.warning("hospital %s: consent withdrawn; windows rebuilt without %d patient(s)",
                            cfg.participant_id, current["withdrawn"])
            write_json_atomic(cfg.state_dir / "status.json", status().model_dump(mode="json"), durable=False)
            await asyncio.sleep(1.0)

    sender = asyncio.create_task(send_reports(consent, node, stop))

    reporter = asyncio.create_task(report())
    node_task = asyncio.create_task(node.run(stop))
    await stop.wait()
    log.info("hospital %s stopping", cfg.participant_id)
    await stop_node(node_task, node)
    for task in (reporter, sender):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    write_json_atomic(cfg.state_dir / "status.json",
                      status().model_copy(update={"stopped": True}).model_dump(mode="json"))
    await node.aclose()
