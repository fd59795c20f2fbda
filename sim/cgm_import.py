"""`wearfed import FORMAT FILE... --out DIR`: real CGM exports into the files the federation's tiers read.

Writes, in DIR:
- `clinical.csv`: `patient,time,glucose,insulin,carbs` in unix seconds and mg/dL (gateway/hospital.py's writer,
  so exactly what `wearfed hospital run --data` reads, and what a scenario's hospital `data =` points at);
- `device-traces.npz`: one trace per patient for `wearfed device run --traces` / `fleet run --traces`
  (device/traces.py's writer); offset 0 is UTC midnight before the first reading, written as `sim_start`;
- `import-summary.json`: per file and per patient what was read, skipped and dropped, and the span and gaps.

Patients: `--patient ID` names the one person of every file given; otherwise each file's name (without the
extension, and for Nightscout without a trailing `entries`/`treatments`, so `ann-entries.json` and
`ann-treatments.json` are one patient `ann`) names it, and a plain CSV's `patient` column wins. Files of one
patient are merged: a timestamp read twice is kept once and counted. A gap is more than GAP_S without a reading.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from federation.model import GRID_SECONDS, HISTORY_STEPS
from federation.runtime import atomic_write_json
from sim.importers import CGMImportError, load_cgm_export
from sim.importers.model import EVENT_KINDS, PatientSeries, dedupe_events, dedupe_glucose

HISTORY_H = HISTORY_STEPS * GRID_SECONDS / 3600
GAP_S = 30 * 60  # two missed 15-min Libre readings, six 5-min Dexcom ones
MAX_TRACE_CELLS = 50_000_000  # patients x distinct times in one .npz (float32: 200 MB per array)
OUTPUTS = ("clinical.csv", "device-traces.npz", "import-summary.json")
_NIGHTSCOUT_SUFFIX = re.compile(r"[-_. ]*(entries|treatments)$", re.IGNORECASE)
_BAD_ID = re.compile(r"[/+#\x00]")


@dataclass(frozen=True)
class ImportOptions:
    fmt: str
    files: tuple[Path, ...]
    out: Path
    tz: str | None = None
    patient: str | None = None
    units: str | None = None
    date_order: str | None = None
    include_scans: bool = False
    errors: str = "drop-out-of-range"
    force: bool = False


def patient_id(path: Path, fmt: str, given: str | None) -> str:
    if given is not None:
        name = given
    else:
        name = _NIGHTSCOUT_SUFFIX.sub("", path.stem) if fmt == "nightscout" else path.stem
        name = name or fmt
    if not 0 < len(name) <= 64 or _BAD_ID.search(name):
        raise CGMImportError(path, f"patient id {name!r} cannot name a device (1-64 characters, none of / + #): "
                                   "pass --patient ID", field="patient")
    return name


def merge(parts: list[PatientSeries]) -> tuple[PatientSeries, Counter]:
    """One patient's series from several files (earlier files win a repeated timestamp)."""
    t = np.concatenate([p.times for p in parts])
    order = np.argsort(t, kind="stable")
    times, glucose, censored, dropped = dedupe_glucose(t[order], np.concatenate([p.glucose_mgdl for p in parts])[order],
                                                       np.concatenate([p.censored for p in parts])[order])
    events = {}
    for kind, (tk, ak) in zip(EVENT_KINDS, (("insulin_times", "insulin_units"), ("carb_times", "carb_grams")),
                              strict=True):
        et, ea, d = dedupe_events(np.concatenate([getattr(p, tk) for p in parts]),
                                  np.concatenate([getattr(p, ak) for p in parts]), kind)
        dropped.update(d)
        events[tk], events[ak] = et, ea
    devices = tuple(sorted({d for p in parts for d in p.devices}))
    serials = tuple(sorted({s for p in parts for s in p.serials}))
    return PatientSeries(patient=parts[0].patient, times=times, glucose_mgdl=glucose, censored=censored,
                         devices=devices, serials=serials, **events), dropped


def _iso(t: int) -> str:
    return datetime.fromtimestamp(int(t), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(s: PatientSeries) -> dict:
    """Counts, span and gaps of one patient (no glucose values)."""
    steps = np.diff(s.times)
    gaps = steps[steps > GAP_S]
    return {"readings": len(s.times), "first": _iso(s.times[0]), "last": _iso(s.times[-1]),
            "span_days": round(float(s.times[-1] - s.times[0]) / 86400, 2),
            "median_interval_s": int(np.median(steps)) if len(steps) else None,
            "gaps_over_30min": len(gaps), "longest_gap_h": round(float(gaps.max()) / 3600, 2) if len(gaps) else 0.0,
            "low_flagged": int(np.sum(s.censored < 0)), "high_flagged": int(np.sum(s.censored > 0)),
            "insulin_events": len(s.insulin_times), "insulin_units": round(float(s.insulin_units.sum()), 3),
            "carb_events": len(s.carb_times), "carb_grams": round(float(s.carb_grams.sum()), 1)}


def _federation_series(s: PatientSeries):  # noqa: ANN202 - federation.series.PatientSeries
    from federation.series import PatientSeries as Series

    return Series(times=s.times, glucose=s.glucose_mgdl, insulin_times=s.insulin_times,
                  insulin_units=s.insulin_units, carb_times=s.carb_times, carb_grams=s.carb_grams)


def trace_arrays(series: dict[str, PatientSeries], out: Path) -> tuple[int, np.ndarray, dict[str, np.ndarray]]:
    """(sim_start, offsets, arrays) of the trace file: every patient on the union of all reading and event times,
    NaN glucose where a patient has no reading, insulin and carbs summed per time (only if any patient has some)."""
    all_t = np.unique(np.concatenate([np.concatenate([s.times, s.insulin_times, s.carb_times])
                                      for s in series.values()]))
    if len(all_t) * len(series) > MAX_TRACE_CELLS:
        raise CGMImportError(out, f"{len(series)} patients x {len(all_t)} distinct times is too "
                                  "large for one trace file: import fewer patients at a time")
    start = int(all_t[0]) // 86400 * 86400
    cgm = np.full((len(series), len(all_t)), np.nan)
    ins, carbs = np.zeros_like(cgm), np.zeros_like(cgm)
    for i, s in enumerate(series.values()):
        cgm[i, np.searchsorted(all_t, s.times)] = s.glucose_mgdl
        np.add.at(ins[i], np.searchsorted(all_t, s.insulin_times), s.insulin_units)
        np.add.at(carbs[i], np.searchsorted(all_t, s.carb_times), s.carb_grams)
    arrays = {"cgm": cgm}
    if any(len(s.insulin_times) or len(s.carb_times) for s in series.values()):
        arrays |= {"insulin": ins, "carbs": carbs}
    return start, all_t - start, arrays


def run_import(opt: ImportOptions) -> dict:
    """Import, merge, write the three outputs, read them back with the tiers' own readers; the summary."""
    taken = [opt.out / name for name in OUTPUTS if (opt.out / name).exists()]
    if taken and not opt.force:
        raise CGMImportError(taken[0], "exists: pass --force to replace the outputs in this directory")
    parts: dict[str, list[PatientSeries]] = {}
    files, dropped = [], Counter()
    for path in opt.files:
        export = load_cgm_export(path, fmt=opt.fmt, tz=opt.tz, patient=patient_id(path, opt.fmt, opt.patient),
                                 units=opt.units, date_order=opt.date_order, include_scans=opt.include_scans,
                                 errors=opt.errors)
        for name, s in export.patients.items():
            patient_id(path, opt.fmt, name)  # a plain CSV's patient column must name a device too
            parts.setdefault(name, []).append(s)
        report = export.report()
        files.append(report | {"patients": list(report["patients"])})
    series = {}
    for name, p in sorted(parts.items()):
        series[name], d = merge(p)
        dropped.update(d)
        if not len(series[name].times):
            raise CGMImportError(opt.files[0], f"patient {name!r} has insulin or carbs but no glucose readings in "
                                               "the files given (add the glucose export, e.g. Nightscout entries)")
    summary = {"format": opt.fmt, "files": files, "merge_dropped": dict(dropped),
               "patients": {n: describe(s) for n, s in series.items()}}
    try:
        summary |= write_outputs(opt.out, series)
        atomic_write_json(opt.out / "import-summary.json", summary, indent=1)
    except OSError as exc:
        raise CGMImportError(opt.out, f"cannot write the outputs: {exc.strerror or exc}") from exc
    return summary


def write_outputs(out: Path, series: dict[str, PatientSeries]) -> dict:
    """clinical.csv and device-traces.npz, each read back by the reader its tier uses; what they hold."""
    from device.traces import load_trace, load_treatments, write_traces
    from federation.windows import windows_from_series
    from gateway.hospital import load_clinical_csv, write_clinical_csv

    out.mkdir(parents=True, exist_ok=True)
    clinical, traces = out / "clinical.csv", out / "device-traces.npz"
    write_clinical_csv(clinical, {n: _federation_series(s) for n, s in series.items()})
    start, offsets, arrays = trace_arrays(series, out)
    write_traces(traces, list(series), offsets, arrays["cgm"], insulin=arrays.get("insulin"),
                 carbs=arrays.get("carbs"))
    back = load_clinical_csv(clinical)
    w = windows_from_series(back, resampled=True)  # as `hospital run` builds them: onto the 5-min grid first
    windows = {name: int(np.sum(w.patient == k)) for k, name in enumerate(w.patients)}
    days = math.ceil((int(offsets[-1]) + 1) / 86400)  # whole days from sim_start past the last reading
    readback = {"hospital_loader": {"patients": len(back), "readings": sum(len(s.times) for s in back.values()),
                                    "insulin_events": sum(len(s.insulin_times) for s in back.values()),
                                    "carb_events": sum(len(s.carb_times) for s in back.values()),
                                    "training_windows": windows},
                "trace_reader": {"devices": len(series), "readings": 0, "insulin_units": 0.0, "carb_grams": 0.0}}
    for name in series:
        readback["trace_reader"]["readings"] += len(load_trace(traces, name, start=start, days=days)[0])
        treat = load_treatments(traces, name, start=start, days=days)
        if treat is not None:
            readback["trace_reader"]["insulin_units"] += round(float(treat[1].sum()), 3)
            readback["trace_reader"]["carb_grams"] += round(float(treat[2].sum()), 1)
    expected = sum(len(s.times) for s in series.values())
    for reader, counts in readback.items():
        if counts["readings"] != expected:
            raise CGMImportError(out, f"{reader} reads {counts['readings']} readings back, {expected} were written")
    # the trace format has insulin and carbs for every device or for none: those without any get zeros
    zeros = [n for n, v in series.items() if "insulin" in arrays and not (len(v.insulin_times) or len(v.carb_times))]
    return {"outputs": {"clinical_csv": str(clinical), "device_traces": str(traces), "sim_start": start,
                        "trace_days": days, "devices_without_treatments": zeros}, "readback": readback}


def format_summary(summary: dict) -> str:
    """The summary as the command prints it."""
    lines = []
    for f in summary["files"]:
        lines.append(f"{f['path']}: {f['format']}, {f['source_units']}"
                     + (" (converted to mg/dL)" if f["converted_to_mgdl"] else "")
                     + f", {f['rows_read']} rows: {f['readings']} readings, {f['events']['insulin']} insulin and "
                       f"{f['events']['carbs']} carb events -> patient {', '.join(f['patients'])}")
        for label, counts in (("skipped", f["skipped"]), ("dropped", f["dropped"])):
            if counts:
                lines.append(f"  {label}: " + "; ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
        lines += [f"  note: {n}" for n in f["notes"]]
    if summary["merge_dropped"]:
        lines.append("merging files: dropped " + "; ".join(f"{k}: {v}" for k, v in summary["merge_dropped"].items()))
    pats = summary["patients"]
    lines.append(f"{len(pats)} patient(s), {sum(p['readings'] for p in pats.values())} readings, "
                 f"{sum(p['insulin_events'] for p in pats.values())} insulin events, "
                 f"{sum(p['carb_events'] for p in pats.values())} carb events")
    for name, p in pats.items():
        lines.append(f"  {name}: {p['readings']} readings {p['first']} .. {p['last']} ({p['span_days']} days, "
                     f"median interval {p['median_interval_s']} s), {p['gaps_over_30min']} gaps > 30 min "
                     f"(longest {p['longest_gap_h']} h), Low/High flagged {p['low_flagged']}/{p['high_flagged']}, "
                     f"insulin {p['insulin_units']} U in {p['insulin_events']} events, "
                     f"carbs {p['carb_grams']} g in {p['carb_events']} events")
    o, r = summary["outputs"], summary["readback"]
    h = r["hospital_loader"]
    lines.append(f"wrote {o['clinical_csv']} (hospital loader reads back {h['patients']} patients, {h['readings']} "
                 f"readings; {sum(h['training_windows'].values())} forecaster training windows)")
    lines += [f"  warning: {name} gives no training windows: the forecaster needs {HISTORY_H:g} h of 5-min readings "
              f"without a gap plus the horizon (federation/windows.py); median interval here "
              f"{pats[name]['median_interval_s']} s" for name, n in h["training_windows"].items() if n == 0]
    lines.append(f"wrote {o['device_traces']} (trace reader reads back {r['trace_reader']['devices']} devices, "
                 f"{r['trace_reader']['readings']} readings; sim_start {o['sim_start']}, {o['trace_days']} days)")
    lines += [f"  warning: {name} has no insulin or carbs in its files, but others do: its trace says 0 U and 0 g "
              "(import it separately to leave them unknown)" for name in o["devices_without_treatments"]]
    return "\n".join(lines)
