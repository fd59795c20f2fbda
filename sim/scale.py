"""The `scale` study: one federation replayed at several participant counts, and how round time grows.

Every count trains on the same clinical cohort (the scenario's `[scale]` patients, split evenly among
hospital participants hosted in `pool_processes` pool processes), so the training work per round is the same
and what grows with the count is the per-participant cost: accounting, encryption, signing, submission and
the cloud's checks and ciphertext sum. Round time is wall time from the round's opening to a new model version
(collection, aggregation, decryption), the median over the scenario's rounds; beside it, each tier's median CPU
seconds per round (`cloud_cpu_seconds_<n>`, `region_relays_...`, `participants_...`: the processes' user and system
time over the same span, from Linux's /proc). Each count is a full replay in
`DIR/n<count>/`; `DIR/summary.json` is the largest count's summary plus `scale` and per-count `runs`.

With `ray` (`wearfed replay SCALE --ray auto|ADDRESS`) the study starts or joins Ray once (`sim.executors`) and
the pool processes train their nodes of each round as Ray tasks on it, every node of a pool at once; the trained
updates are the same as in-process for the same seed (simulation mode, the driver's thread counts: see
`sim.executors`). `scale["node_training"]` says where they ran.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from sim.replay import prepare_run_dir, run_replay
from sim.scenario import Scenario, at_scale
from sim.summary import write_summary


def round_seconds(summary: dict) -> float | None:
    """Median open-to-model time over the rounds that produced a model; None if none did."""
    times = [r["round_seconds"] for r in summary["rounds"] if r.get("model_version") is not None]
    return round(statistics.median(times), 2) if times else None


def run_scale(s: Scenario, out: Path, *, broker: str = "auto", ray: str | None = None) -> dict:
    if s.scale is None:
        raise ValueError(f"scenario {s.scenario.name!r} has no [scale] section")
    if not ray:
        return _run_scale(s, out, broker=broker, ray_address=None, where="in-process")
    from sim.executors import RayExecutor

    ex = RayExecutor(ray)
    try:
        return _run_scale(s, out, broker=broker, ray_address=ex.address, where=ex.name)
    finally:
        ex.close()


def _run_scale(s: Scenario, out: Path, *, broker: str, ray_address: str | None, where: str) -> dict:
    assert s.scale is not None
    t_start = time.time()
    out = prepare_run_dir(out)
    (out / "scenario.json").write_text(s.model_dump_json(indent=2))
    runs: dict[int, dict] = {}
    regional: dict[int, dict] = {}
    regions = s.scale.regions
    for n in s.scale.participants:
        runs[n] = run_replay(at_scale(s, n), out / f"n{n}", broker=broker, pool_processes=s.scale.pool_processes,
                             ray_address=ray_address)
        if regions:
            regional[n] = run_replay(at_scale(s, n), out / f"n{n}-regions{regions}", broker=broker,
                                     pool_processes=s.scale.pool_processes, regions=regions, ray_address=ray_address)
    low, high = min(runs), max(runs)
    scale = _ratio(runs, low, high, "")
    if regions:
        scale.update(_ratio(regional, low, high, "_regions"), regions=regions)
    scale["participants"] = sorted(runs)
    scale["patients"] = s.scale.patients
    scale["node_training"] = where
    every = {str(n): r for n, r in sorted(runs.items())} | {f"{n}-regions{regions}": r for n, r in regional.items()}
    summary = {**runs[high], "scenario": s.scenario.name, "scale": scale,
               "runs": {key: {"rounds": r["rounds"], "wall_seconds": r["wall_seconds"],
                              "readings": r["readings"]} for key, r in every.items()},
               "wall_seconds": round(time.time() - t_start, 1)}
    run = write_summary(summary, out)
    from sim.html_report import write_report

    write_report(run, out)
    for suffix, label in (("", "direct"), ("_regions", f"through {regions} region relays")):
        if f"ratio{suffix}" in scale:
            ratio = "n/a" if scale[f"ratio{suffix}"] is None else f"{scale[f'ratio{suffix}']:.2f}x"
            print(f"scale ({label}): round time {scale[f'round_seconds_{low}{suffix}']} s at {low} participants, "
                  f"{scale[f'round_seconds_{high}{suffix}']} s at {high}: ratio {ratio}; the cloud's CPU per round "
                  f"{scale.get(f'cloud_cpu_seconds_{low}{suffix}')} s and "
                  f"{scale.get(f'cloud_cpu_seconds_{high}{suffix}')} s")
    return summary


def cpu_per_round(summary: dict, tier: str) -> float | None:
    """Median CPU seconds a tier's processes used per completed round (`cloud`, `region_relays`, `participants`)."""
    used = [r["cpu_seconds"][tier] for r in summary["rounds"]
            if r.get("model_version") is not None and tier in r.get("cpu_seconds", {})]
    return round(statistics.median(used), 2) if used else None


def _ratio(runs: dict[int, dict], low: int, high: int, suffix: str) -> dict:
    """Median round seconds per count and the largest count's over the smallest's, and each tier's median CPU
    seconds per round, keys ending in `suffix`."""
    out: dict = {f"round_seconds_{n}{suffix}": round_seconds(r) for n, r in sorted(runs.items())}
    t_low, t_high = out[f"round_seconds_{low}{suffix}"], out[f"round_seconds_{high}{suffix}"]
    out[f"ratio{suffix}"] = round(t_high / t_low, 3) if t_low and t_high else None
    for n, r in sorted(runs.items()):
        for tier in ("cloud", "region_relays", "participants"):
            if (cpu := cpu_per_round(r, tier)) is not None:
                out[f"{tier}_cpu_seconds_{n}{suffix}"] = cpu
    return out
