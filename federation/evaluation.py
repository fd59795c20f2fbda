"""Scoring a model version on held-out windows, pooling per-site scores, and the signed evaluation report.

The same scores are computed by a hospital on its local held-out patients (federated evaluation: only these
numbers leave the site), by the cloud on its synthetic validation set (an ``.npz`` file, format below), and by
a data scientist off-cloud. Fractions are in [0, 1]; glucose errors in mg/dL; suffix 30 is the +30 min horizon.

Validation set file (``numpy.savez``): ``x`` (n, N_INPUTS) model inputs (24 glucose values in mg/dL, then the
`federation.features`) and ``y`` (n, 2) float mg/dL targets at +30/+60 min (what the windows of
`federation.windows` give), optional ``meta`` (a JSON string) and optional ``groups`` (n,) the age group of each
window's patient (one of `AGE_GROUPS`), which adds the per-group figures the fairness gates read (`cloud.fairness`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from federation import error_grids, glycemic, metrics, model
from federation.errors import SchemaError
from federation.wire import PARTICIPANT_ID

EVALUATION_DOMAIN = b"wearfed/evaluation/v1\n"
SOURCES = ("posted", "federated", "validation")  # data scientist / hospitals / the cloud's synthetic set
MIN_WINDOWS = 20  # fewer held-out windows than this give scores too noisy to gate on
AGE_GROUPS = ("child", "adolescent", "adult")  # the UVA/Padova cohorts (sim/cohort); per-group keys: child_rmse30
GROUP_METRICS = ("n_windows", "rmse30", "hypo_sens30", "hypo_events30")  # what each group reports


def group_key(group: str, metric: str) -> str:
    """The key of one age group's figure, `child_rmse30` (the form `sim.evaluate` posts too)."""
    return f"{group}_{metric}"


def score_windows(weights: np.ndarray, x: np.ndarray, y: np.ndarray, *,
                  groups: np.ndarray | None = None) -> dict[str, float]:
    """rmse/mae/clarke_ab/hypo_sens at +30 and +60 min of `weights` on (x, y), with the counts pooling needs;
    with `groups`, also RMSE@30, hypo sensitivity@30 and counts per age group (`child_rmse30`, ...)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != model.N_INPUTS or y.shape != (len(x), len(model.HORIZON_STEPS)):
        raise SchemaError(f"windows must be x (n, {model.N_INPUTS}) and y (n, {len(model.HORIZON_STEPS)}) for "
                          f"{model.ARCHITECTURE}, got {x.shape} and {y.shape}")
    if len(x) < MIN_WINDOWS:
        raise SchemaError(f"{len(x)} windows; at least {MIN_WINDOWS} are needed to score a model")
    pred = np.clip(model.predict(weights, x), 0.0, None)  # a negative forecast means zero clinically
    out: dict[str, float] = {"n_windows": float(len(x))}
    if not np.isfinite(pred).all():
        raise SchemaError("the model's forecasts are not finite (diverged weights)")
    for j, minutes in enumerate((30, 60)):
        ref, p = y[:, j], pred[:, j]
        hypo = glycemic.hypo_detection(ref, p)
        out[f"rmse{minutes}"] = metrics.rmse(p, ref)
        out[f"mae{minutes}"] = metrics.mae(p, ref)
        out[f"clarke_ab{minutes}"] = error_grids.clarke_fractions(ref, p)["AB"]
        out[f"hypo_events{minutes}"] = float(hypo.true_positive + hypo.false_negative)
        if hypo.sensitivity is not None:
            out[f"hypo_sens{minutes}"] = hypo.sensitivity
    if groups is not None:
        out.update(_group_scores(pred[:, 0], y[:, 0], np.asarray(groups)))
    return out


def _group_scores(pred30: np.ndarray, ref30: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    if groups.shape != pred30.shape:
        raise SchemaError(f"groups must have shape {pred30.shape}, got {groups.shape}")
    out: dict[str, float] = {}
    for g in AGE_GROUPS:
        rows = groups == g
        if not rows.any():
            continue
        hypo = glycemic.hypo_detection(ref30[rows], pred30[rows])
        out[group_key(g, "n_windows")] = float(rows.sum())
        out[group_key(g, "rmse30")] = metrics.rmse(pred30[rows], ref30[rows])
        out[group_key(g, "hypo_events30")] = float(hypo.true_positive + hypo.false_negative)
        if hypo.sensitivity is not None:
            out[group_key(g, "hypo_sens30")] = hypo.sensitivity
    return out


def pool(reports: list[dict[str, float]]) -> dict[str, float]:
    """Pool per-site scores exactly: RMSE as sqrt of the window-weighted mean square, MAE and Clarke A+B
    weighted by windows, hypo sensitivity weighted by each site's hypo events."""
    reports = [r for r in reports if r.get("n_windows", 0) > 0]
    if not reports:
        return {}
    n = np.array([r["n_windows"] for r in reports], dtype=np.float64)
    out: dict[str, float] = {"n_windows": float(n.sum()), "sites": float(len(reports))}
    for minutes in (30, 60):
        for key, how in ((f"rmse{minutes}", "rms"), (f"mae{minutes}", "mean"), (f"clarke_ab{minutes}", "mean")):
            have = [(r[key], w) for r, w in zip(reports, n, strict=True) if key in r]
            if have:
                v, w = np.array(have).T
                mean = np.sum(w * (v**2 if how == "rms" else v)) / w.sum()
                out[key] = float(np.sqrt(mean) if how == "rms" else mean)
        events = [(r[f"hypo_sens{minutes}"], r.get(f"hypo_events{minutes}", 0.0)) for r in reports
                  if f"hypo_sens{minutes}" in r]
        total = sum(e for _, e in events)
        if total > 0:
            out[f"hypo_sens{minutes}"] = float(sum(s * e for s, e in events) / total)
            out[f"hypo_events{minutes}"] = float(total)
    return out


def save_validation_set(path: Path, x: np.ndarray, y: np.ndarray, *, meta: dict | None = None,
                        groups: np.ndarray | None = None) -> None:
    """Write a validation set file (checked on the way out, as `load_validation_set` checks it on the way in)."""
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float32)
    _check_set(x, y, where=str(path))
    arrays = {"x": x, "y": y, "meta": np.array(json.dumps(meta or {}))}
    if groups is not None:
        arrays["groups"] = np.asarray(groups, dtype=str)
        _check_groups(arrays["groups"], len(x), where=str(path))
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def load_validation_set(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(x, y, meta) from a validation set file; SchemaError naming the file and the problem."""
    x, y, meta, _ = load_validation_set_groups(path)
    return x, y, meta


def load_validation_set_groups(path: Path) -> tuple[np.ndarray, np.ndarray, dict, np.ndarray | None]:
    """(x, y, meta, groups or None) from a validation set file; SchemaError naming the file and the problem."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data or "y" not in data:
                raise SchemaError(f"{path}: a validation set needs arrays 'x' and 'y', found {sorted(data.files)}")
            x, y = data["x"].astype(np.float64), data["y"].astype(np.float64)
            meta = json.loads(str(data["meta"])) if "meta" in data else {}
            groups = data.get("groups")
    except (OSError, ValueError) as exc:
        raise SchemaError(f"{path}: not a readable .npz validation set: {exc}") from exc
    _check_set(x, y, where=str(path))
    if groups is not None:
        _check_groups(groups, len(x), where=str(path))
    return x, y, meta, groups


def _check_groups(groups: np.ndarray, n: int, *, where: str) -> None:
    if groups.shape != (n,) or groups.dtype.kind != "U":
        raise SchemaError(f"{where}: groups must be {n} strings (one per window), got {groups.dtype} {groups.shape}")
    bad = sorted(set(groups.tolist()) - set(AGE_GROUPS))
    if bad:
        raise SchemaError(f"{where}: groups has unknown age group(s) {bad[:5]}; allowed: {list(AGE_GROUPS)}")


def _check_set(x: np.ndarray, y: np.ndarray, *, where: str) -> None:
    if x.ndim != 2 or x.shape[1] != model.N_INPUTS:
        raise SchemaError(f"{where}: x must have shape (n, {model.N_INPUTS}) for {model.ARCHITECTURE} (24 glucose "
                          f"values, then {model.N_FEATURES} features), got {x.shape}")
    if y.shape != (len(x), len(model.HORIZON_STEPS)):
        raise SchemaError(f"{where}: y must have shape ({len(x)}, {len(model.HORIZON_STEPS)}), got {y.shape}")
    if len(x) < MIN_WINDOWS:
        raise SchemaError(f"{where}: {len(x)} windows, at least {MIN_WINDOWS} needed")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise SchemaError(f"{where}: inputs and targets must be finite")
    if (x[:, :model.HISTORY_STEPS] < 0).any() or (y < 0).any():
        raise SchemaError(f"{where}: glucose values must be non-negative mg/dL")


class EvaluationReport(BaseModel):
    """A participant's scores of one model version on its local held-out data, signed by the participant."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    participant: str = Field(pattern=PARTICIPANT_ID)
    model_version: int = Field(ge=0)
    model_hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="binds the scores to these exact weights")
    metrics: dict[str, float] = Field(max_length=32)
    signature: str = Field(max_length=200)

    def signed_doc(self) -> dict:
        return self.model_dump(mode="json", exclude={"signature"})
