"""Cohort traces on disk: one Parquet file per subject plus a ``cohort.json`` sidecar.

Each ``patients/patient-NNNNN.parquet`` has columns ``timestamp`` (ms, the subject's wall clock), ``bg``
(blood glucose, mg/dL), ``ig`` (interstitial glucose, mg/dL), ``cgm`` (sensor reading, NaN where none),
``carbs`` (g announced in the interval), ``insulin`` (U delivered in the interval), and the key-value metadata
``wearfed.cohort`` (JSON: model version, seed, subject, sensor, scenario, controller). ``cohort.json`` holds
the run's metadata, the file list and the subject table (parameters included).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from federation.errors import SchemaError

from .params import Cohort
from .simulate import CohortTraces

META_KEY = b"wearfed.cohort"
SIDECAR = "cohort.json"
SCHEMA_VERSION = 1
COLUMNS = ("bg", "ig", "cgm", "carbs", "insulin")


def patient_file(index: int) -> str:
    """Relative path of subject ``index``'s trace."""
    return f"patients/patient-{index:05d}.parquet"


def write_patients(traces: CohortTraces, cohort: Cohort, out: Path, first_index: int = 0) -> list[str]:
    """Write each subject of ``traces`` (subject ``i`` has index ``first_index + i``); relative paths."""
    (out / "patients").mkdir(parents=True, exist_ok=True)
    stamps = pa.array(traces.timestamps().astype("datetime64[ms]"))
    written = []
    for i, name in enumerate(traces.subjects):
        index = first_index + i
        meta = dict(traces.metadata)
        meta.update({
            "schema_version": SCHEMA_VERSION,
            "subject": {"index": index, "name": name, "group": traces.groups[i], "origin": cohort.origin[i]},
        })
        arrays = [stamps] + [pa.array(getattr(traces, c)[i], type=pa.float32()) for c in COLUMNS]
        table = pa.Table.from_arrays(arrays, names=["timestamp", *COLUMNS])
        table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
        rel = patient_file(index)
        pq.write_table(table, out / rel, compression="zstd")
        written.append(rel)
    return written


def write_sidecar(out: Path, metadata: dict[str, object], files: Iterable[str], cohort: Cohort) -> Path:
    """Write ``cohort.json`` (run metadata, files, subject table) and return its path."""
    doc = dict(metadata)
    doc.update({"schema_version": SCHEMA_VERSION, "files": list(files), "subjects": cohort.subject_table()})
    path = out / SIDECAR
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return path


def read_patient(path: Path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """One subject's columns (numpy arrays) and its metadata."""
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise SchemaError(f"{path}: no {META_KEY.decode()} metadata; not a wearfed cohort trace")
    meta = json.loads(raw)
    columns = {"timestamp": table.column("timestamp").to_numpy().astype("datetime64[ms]")}
    columns.update({c: table.column(c).to_numpy() for c in COLUMNS})
    return columns, meta


def read_cohort(out: Path) -> CohortTraces:
    """All traces of a written cohort as one ``CohortTraces`` (metadata from the sidecar)."""
    sidecar = out / SIDECAR
    if not sidecar.is_file():
        raise SchemaError(f"{sidecar} not found; not a wearfed cohort directory")
    doc = json.loads(sidecar.read_text(encoding="utf-8"))
    if doc.get("schema_version") != SCHEMA_VERSION:
        found = doc.get("schema_version")
        raise SchemaError(f"{sidecar}: schema_version {found!r}, expected {SCHEMA_VERSION}")
    rows = [read_patient(out / f) for f in doc["files"]]
    stamps = rows[0][0]["timestamp"]
    start = datetime.fromisoformat(str(doc["start"]))
    minutes = ((stamps - np.datetime64(start, "ms")) // np.timedelta64(1, "m")).astype(np.int64)
    stacked = {c: np.stack([r[0][c] for r in rows]) for c in COLUMNS}
    meta = {k: v for k, v in doc.items() if k not in ("files", "subjects")}
    return CohortTraces(
        subjects=tuple(r[1]["subject"]["name"] for r in rows),
        groups=tuple(r[1]["subject"]["group"] for r in rows),
        start=start,
        interval_min=int(doc["interval_min"]),
        minutes=minutes,
        metadata=meta,
        **stacked,
    )
