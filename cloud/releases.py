"""Signed TFLite releases of the promoted model: exported in the background at promotion, re-signed at rollback.

Conversion runs in one child process (spawned on first use), so it never competes with the API for the GIL.

Every promotion and every rollback (a release hook of `cloud.promotion.Promotion`) takes the next release serial
and queues one job on a single worker thread: export the version with `cloud.tflite_export` (or reuse its cached
file), check the LiteRT/torch agreement, calibrate, and sign a `federation.release.TFLiteManifest` with the release key.
State under ``<state-dir>/releases``: ``index.json`` (last serial, head), ``v<N>.tflite`` + ``v<N>.json`` per
exported version, ``v<N>.refused.json`` when the agreement check refused it, ``signed/<serial>.json``.

API (`cloud.api.registry`): GET /v1/releases/current/tflite (the head, if it is the promoted version),
GET /v1/models/{version}/release/tflite, GET /v1/releases/tflite-status. Until an artifact exists they
answer 409 with the reason: export pending, litert-torch not installed, export disabled, agreement refused.
Set ``WEARFED_TFLITE_EXPORT=off`` to switch exports off, ``WEARFED_RELEASE_VALIDATION`` to an .npz of
validation windows (default: the packaged set).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from cloud import tflite_export
from cloud.errors import Conflict, NotFound
from cloud.registry import Registry
from cloud.store import Store
from federation.release import Calibration, TFLiteManifest, make_tflite_release
from federation.runtime import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)
EXPORT_ENV = "WEARFED_TFLITE_EXPORT"
VALIDATION_ENV = "WEARFED_RELEASE_VALIDATION"


def _exit_with_parent(parent: int, output: str | None = None) -> None:
    """Runs in the export child: leave as soon as the cloud process is gone (a SIGKILL included), never orphaned.
    With `output`, the child's stdout and stderr (litert-torch's and torchao's import-time warnings) go to that
    file instead of the cloud's log; its errors still reach the cloud as exceptions."""
    if output is not None:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class ReleaseArtifacts:
    """TFLite artifacts of promoted versions, one signed document per release serial."""

    def __init__(self, store: Store, registry: Registry, directory: Path, *, validation: Path | None = None,
                 enabled: bool | None = None, warm: bool = False) -> None:
        self.store, self.registry, self.dir = store, registry, Path(directory)
        (self.dir / "signed").mkdir(parents=True, exist_ok=True)
        env = os.environ.get(VALIDATION_ENV)
        self.validation = validation or (Path(env) if env else None)
        self.enabled = enabled if enabled is not None else os.environ.get(EXPORT_ENV, "on").lower() != "off"
        self._lock = threading.RLock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tflite-export")
        self._converter: ProcessPoolExecutor | None = None  # started on the first export
        self._state: dict[int, str] = {}  # serial -> "pending" or the reason it has no artifact
        index = self.dir / "index.json"
        self._index = json.loads(index.read_text()) if index.exists() else {"serial": 0, "head": None}
        missing = tflite_export.exporter_missing()
        if not self.enabled:
            log.warning("TFLite export is off (%s=off): devices get no on-device model", EXPORT_ENV)
        elif missing:
            log.error("TFLite export unavailable, devices get no on-device model: %s", missing)
        elif warm:
            self._converter_pool().submit(tflite_export.warm_up)  # the child imports litert-torch now, not later

    # -- hooks -------------------------------------------------------------------------------------
    def on_change(self, version: int) -> Future | None:
        """A promotion or rollback made `version` current: take the next serial and queue its export."""
        with self._lock:
            serial = int(self._index["serial"]) + 1
            self._index = {"serial": serial, "head": {"serial": serial, "version": int(version)}}
            atomic_write_json(self.dir / "index.json", self._index)
            if not self.enabled:
                self._state[serial] = f"TFLite export is off on this cloud ({EXPORT_ENV}=off)"
                return None
            self._state[serial] = "pending"
        log.info("release %d: model v%d queued for TFLite export", serial, version)
        return self._pool.submit(self._job, serial, int(version))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._converter is not None:
            self._converter.shutdown(wait=False, cancel_futures=True)

    def _converter_pool(self) -> ProcessPoolExecutor:
        if self._converter is None:
            self._converter = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_exit_with_parent,
                                                  initargs=(os.getpid(), str(self.dir / "exporter.log")))
            log.info("TFLite exporter started; its third-party output goes to %s", self.dir / "exporter.log")
        return self._converter

    def _export(self, weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> tflite_export.Export:
        """Convert and check in a child process: litert-torch's import and conversion take seconds of CPU that
        would otherwise hold this process's GIL while it serves rounds."""
        try:
            return self._converter_pool().submit(tflite_export.export_checked, weights, x, y,
                                                 tolerance=tflite_export.MAX_ABS_DIFF_MGDL).result()
        except BrokenProcessPool:
            self._converter = None  # the child died (killed, out of memory): a fresh one next time
            raise

    # -- the job -----------------------------------------------------------------------------------
    def _job(self, serial: int, version: int) -> None:
        try:
            self._state[serial] = self._export_and_sign(serial, version)
        except Exception as exc:  # a failed export must not kill the worker: the reason is served instead
            log.exception("release %d: TFLite export of v%d failed", serial, version)
            self._state[serial] = f"export failed: {exc}"

    def _export_and_sign(self, serial: int, version: int) -> str:
        m = self.registry.get(version)
        refused = self.dir / f"v{version}.refused.json"
        if refused.exists():
            return json.loads(refused.read_text())["reason"]
        path, meta = self.dir / f"v{version}.tflite", self.dir / f"v{version}.json"
        if path.exists() and meta.exists():
            data, info = path.read_bytes(), json.loads(meta.read_text())
        else:
            missing = tflite_export.exporter_missing()
            if missing:
                log.error("release %d: no TFLite artifact for v%d: %s", serial, version, missing)
                return f"no TFLite artifact: {missing}"
            x, y = tflite_export.load_validation(self.validation)
            try:
                ex = self._export(self.registry.weights_of(m), x, y)
            except tflite_export.AgreementError as exc:
                atomic_write_json(refused, {"reason": f"refused: {exc}"})
                self.store.record("release.tflite_refused", "cloud", version=version, reason=str(exc))
                log.error("release %d: v%d refused: %s", serial, version, exc)
                return f"refused: {exc}"
            data = ex.tflite
            info = {"max_abs_diff_mgdl": ex.max_abs_diff_mgdl, "calibration": ex.calibration.to_doc()}
            atomic_write_bytes(path, data)
            atomic_write_json(meta, info)
        manifest = TFLiteManifest(format="tflite", version=version, serial=serial, created_at=m.created_at,
                                  architecture=m.architecture, model_hash=m.hash,
                                  tflite_sha256=hashlib.sha256(data).hexdigest(),
                                  tflite_bytes=len(data), max_abs_diff_mgdl=float(info["max_abs_diff_mgdl"]),
                                  calibration=Calibration.from_doc(info["calibration"]).to_doc())
        signed = make_tflite_release(manifest, data, self.registry.release_key)
        # logged before it is served: no device can hold a release the audit ledger does not show (a crash between
        # the two leaves a logged serial that is never served; the next change signs a new one)
        self.store.record("release.tflite_signed", "cloud", version=version, serial=serial,
                        sha256=manifest.tflite_sha256, bytes=len(data), max_abs_diff_mgdl=manifest.max_abs_diff_mgdl)
        atomic_write_json(self.dir / "signed" / f"{serial}.json", signed)
        log.info("release %d: model v%d signed as TFLite (%d B, max |LiteRT - torch| %.3g mg/dL)", serial, version,
                 len(data), manifest.max_abs_diff_mgdl)
        return "signed"

    # -- serving -----------------------------------------------------------------------------------
    def _signed(self, serial: int) -> dict | None:
        path = self.dir / "signed" / f"{serial}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def _reason(self, serial: int, version: int) -> str:
        state = self._state.get(serial)
        if state is None:  # a serial from before a restart, never signed: nothing will sign it now
            return f"release {serial} of model v{version} was not signed before the cloud restarted"
        if state == "pending":
            return f"the TFLite artifact of model v{version} (release {serial}) is being exported; ask again"
        return f"no TFLite artifact for model v{version} (release {serial}): {state}"

    def current(self) -> dict:
        """The signed TFLite release of the promoted version (queues one when the head is not it)."""
        promoted = self.registry.promoted_version()
        with self._lock:
            head = self._index.get("head")
            if head is None or head["version"] != promoted or (
                    self._signed(head["serial"]) is None and head["serial"] not in self._state):
                self.on_change(promoted)  # first start (v0), or a head lost across a restart
                head = self._index["head"]
        doc = self._signed(head["serial"])
        if doc is None:
            raise Conflict(self._reason(head["serial"], head["version"]))
        return doc

    def for_version(self, version: int) -> dict:
        """The latest signed TFLite release of `version` (any serial)."""
        for serial in range(int(self._index["serial"]), 0, -1):
            doc = self._signed(serial)
            if doc is not None and doc["manifest"]["version"] == version:
                return doc
        raise NotFound(f"model v{version} has no signed TFLite release")

    def status(self) -> dict:
        head = self._index.get("head")
        return {"enabled": self.enabled, "exporter": tflite_export.exporter_missing() or "litert-torch",
                "head": head, "state": None if head is None else
                "signed" if self._signed(head["serial"]) else self._state.get(head["serial"], "unsigned"),
                "max_abs_diff_limit_mgdl": tflite_export.MAX_ABS_DIFF_MGDL}

