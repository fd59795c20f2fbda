"""The explanation service: a worker thread that explains each new model version on the validation cohort
(`cloud.explanations`) after its round completed, stores the document per version (SHA-256 in the audit ledger),
and serves it; off the request path, at a lower priority, so neither a round nor a request waits for Captum.

Jobs come from the aggregation worker (a version just registered) and from start-up (live versions without an
explanation, e.g. the initial model). Without a validation set there is nothing to explain on: no job runs and
`get` says so. A failed explanation (diverged weights) is audited as ``model.explanation_failed``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import threading

from sqlalchemy import select

from cloud import explanations
from cloud.errors import NotFound
from cloud.evaluations import ValidationSet
from cloud.governance_db import ModelExplanationRow
from cloud.record_db import ModelVersion
from cloud.registry import Registry
from cloud.store import Store

log = logging.getLogger(__name__)
_STOP = -1
NICE = 10  # the worker thread's OS priority (Linux: per thread); request handlers and the aggregation run at 0


def _as_background_work() -> None:
    """Lower this thread's OS priority, and give torch one intra-op thread in this process: the forecaster's ops are
    too small to split, so a second thread only burns the core a round's requests need (measured: one explanation of
    3,000 windows, 1.6 s of CPU with torch's default 2 threads on a 2-core machine, 0.66 s with one)."""
    import torch

    torch.set_num_threads(1)
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)


class Explainer:
    def __init__(self, store: Store, validation: ValidationSet | None) -> None:
        self.store = store
        self.validation = validation
        self._queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def schedule(self, version: int) -> None:
        """Queue a version (the worker starts on first use); nothing to do without a validation set."""
        if self.validation is None:
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="explainer", daemon=True)
                self._thread.start()
        self._queue.put(version)

    def schedule_missing(self) -> None:
        """Queue every candidate or promoted version that has no explanation yet (start-up)."""
        if self.validation is None:
            return
        with self.store.read() as s:
            have = set(s.scalars(select(ModelExplanationRow.model_version)))
            live = s.scalars(select(ModelVersion.version).where(ModelVersion.status.in_(("candidate", "promoted"))))
            missing = [v for v in live if v not in have]
        for v in missing:
            self.schedule(v)

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def _work(self) -> None:
        _as_background_work()
        while (version := self._queue.get()) != _STOP:
            try:
                self.explain_now(version)
            except Exception:  # the worker outlives any one version
                log.exception("explainer: model version %s", version)

    def explain_now(self, version: int) -> dict | None:
        """Explain one version synchronously (the worker's job; idempotent: a stored explanation is kept)."""
        val = self.validation
        if val is None:
            return None
        with self.store.read() as s:
            if s.get(ModelExplanationRow, version) is not None:
                return self.get(version)
            m = s.get(ModelVersion, version)
            if m is None:
                raise NotFound(f"model version {version} does not exist")
            weights, model_hash = Registry.weights(m), m.hash
        doc = explanations.safe_explain(weights, val.x, groups=val.groups, meta=val.meta)
        with self.store.tx() as s:
            if doc is None:
                self.store.append(s, "model.explanation_failed", "cloud", model_version=version)
                return None
            doc = {**doc, "model_hash": model_hash}
            body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
            digest = hashlib.sha256(body).hexdigest()
            s.add(ModelExplanationRow(model_version=version, body=body, sha256=digest))
            self.store.append(s, "model.explained", "cloud", model_version=version, sha256=digest,
                              method=doc["method"], library=doc["library"],
                              global_share={f: v["share"] for f, v in doc["global"]["families"].items()},
                              local_kept=doc["local"]["kept"], completeness_gap_mgdl=doc["completeness_gap_mgdl"])
        return self.get(version)

    def get(self, version: int) -> dict | None:
        """The stored document of a version (None: not computed, or no validation set)."""
        with self.store.read() as s:
            row = s.get(ModelExplanationRow, version)
            return None if row is None else {**json.loads(row.body), "model_version": version, "sha256": row.sha256}

    def view(self, version: int) -> dict:
        """What the API serves: the document, or why there is none (404 for an unknown version)."""
        with self.store.read() as s:
            if s.get(ModelVersion, version) is None:
                raise NotFound(f"model version {version} does not exist")
        doc = self.get(version)
        if doc is not None:
            return {"status": "computed", **doc}
        if self.validation is None:
            return {"status": "unavailable", "model_version": version,
                    "reason": "the cloud has no validation set (cloud serve --validation): nothing to explain on"}
        return {"status": "pending", "model_version": version,
                "reason": "queued for the explanation worker (or it failed: see model.explanation_failed)"}
