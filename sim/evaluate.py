"""Held-out evaluation: forecasts scored on virtual patients never seen in training, against CGM and true BG.

Every figure a clinician reads (`sim.scoring.score`: RMSE, MAE, MARD, Clarke and Parkes zones, window-level hypo
sensitivity), plus the time lag of the forecast and event-level hypo alerts at +30 min (sensitivity, precision,
false alerts per patient-day, time gained), overall and per age group (children, adolescents, adults).

A held-out set may keep its patients' first `fit_days` apart (`HeldOut.fit`): the per-patient AR baseline is fitted
there, and every model is scored on the same later windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from federation import glycemic, metrics, model
from federation.clock import DEFAULT_SIM_START
from federation.evaluation import AGE_GROUPS
from federation.windows import series_windows, to_grid
from sim.patients import PatientTrace, heldout_patients
from sim.scoring import score

HORIZONS = (30, 60)
ALERT_LEVELS = (70.0, 75.0, 80.0, 85.0, 90.0)  # forecast levels below which an alert is raised, scanned
MAX_FALSE_ALERTS_PER_DAY = 1.0  # the operating point the issue asks for


@dataclass(frozen=True)
class HeldOut:
    x: np.ndarray  # (n, N_INPUTS) clean CGM history and features
    y_cgm: np.ndarray  # (n, 2) CGM at +30 and +60 min
    y_bg: np.ndarray  # (n, 2) true blood glucose at +30 and +60 min
    groups: np.ndarray  # (n,) age group of each window's patient
    patient: np.ndarray  # (n,) patient index
    t: np.ndarray  # (n,) unix seconds of each window's last reading
    patients: int
    patient_days: float  # days of windows scored, summed over patients
    fit: HeldOut | None = None  # the same patients' earlier windows (per-patient baselines fit there)

    def take(self, rows: np.ndarray) -> HeldOut:
        return HeldOut(self.x[rows], self.y_cgm[rows], self.y_bg[rows], self.groups[rows], self.patient[rows],
                       self.t[rows], int(np.unique(self.patient[rows]).size),
                       self.patient_days * len(rows) / max(len(self.x), 1), None)


def trace_windows(p: PatientTrace) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y_cgm, y_bg, t) of one patient: windows on the CGM series with the true BG at the same target bins."""
    x, y, t = series_windows(p.series())
    seen = ~np.isnan(p.cgm)
    origin, bg_grid = to_grid(p.times[seen], p.bg[seen])
    idx = (t - origin) // model.GRID_SECONDS
    y_bg = np.stack([bg_grid[idx + h] for h in model.HORIZON_STEPS], axis=1) if len(t) else np.empty((0, 2))
    # the UVA/Padova equations let plasma glucose of a few resampled subjects in deep hypoglycaemia fall below zero
    # (the sensor floor hides it in CGM): a reference below 0 mg/dL is 0
    return x, y, np.clip(y_bg, 0.0, None), t


def heldout_from(pats: list[PatientTrace], *, fit_until: float | None = None) -> HeldOut:
    """Windows of these patients; with `fit_until`, windows whose targets end by then go to `.fit`."""
    parts = [(*trace_windows(p), p.group) for p in pats]
    x = np.concatenate([q[0] for q in parts])
    y, y_bg, t = (np.concatenate([q[i] for q in parts]) for i in (1, 2, 3))
    groups = np.concatenate([np.full(len(q[0]), q[4]) for q in parts])
    patient = np.concatenate([np.full(len(q[0]), k, dtype=np.int64) for k, q in enumerate(parts)])
    days = len(x) * model.GRID_SECONDS / 86400.0
    whole = HeldOut(x, y, y_bg, groups, patient, t, len(pats), days)
    if fit_until is None:
        return whole
    last_target = t + max(model.HORIZON_STEPS) * model.GRID_SECONDS
    fit, test = last_target <= fit_until, t > fit_until
    out = whole.take(np.flatnonzero(test))
    return HeldOut(out.x, out.y_cgm, out.y_bg, out.groups, out.patient, out.t, len(pats), out.patient_days,
                   whole.take(np.flatnonzero(fit)))


def heldout_set(*, source: str, patients: int, days: float, seed: int, sensor: str = "dexcom-g7",
                fit_days: float = 0.0) -> HeldOut:
    """Held-out patients (other subjects, other seed); scored on their last `days`, the first `fit_days` kept apart."""
    pats = heldout_patients(source, patients, days=days + fit_days, seed=seed, start=DEFAULT_SIM_START,
                            sensor=sensor)
    return heldout_from(pats, fit_until=DEFAULT_SIM_START + fit_days * 86400 if fit_days else None)


def _alert_scores(pred30: np.ndarray, data: HeldOut, ref: np.ndarray, prefix: str) -> dict[str, float]:
    """Event-level hypo alerts at +30 min at every scanned alert level, and the operating level: the highest
    sensitivity with at most MAX_FALSE_ALERTS_PER_DAY false alerts per patient-day."""
    out: dict[str, float] = {}
    target_t = data.t + model.HORIZON_STEPS[0] * model.GRID_SECONDS
    best: tuple[float, float] | None = None
    for level in ALERT_LEVELS:
        a = glycemic.hypo_alerts(ref, pred30, target_t, data.patient, alert_below=level,
                                 patient_days=max(data.patient_days, 1e-9))
        tag = f"{prefix}alert{int(level)}_"
        out[f"{tag}sens30"] = _num(a.sensitivity)
        out[f"{tag}precision30"] = _num(a.precision)
        out[f"{tag}false_per_day30"] = _num(a.false_alerts_per_day)
        out[f"{tag}gain_min30"] = _num(a.time_gained_min)
        fa = a.false_alerts_per_day
        if a.sensitivity is not None and fa is not None and fa <= MAX_FALSE_ALERTS_PER_DAY \
                and (best is None or a.sensitivity > best[1]):
            best = (level, a.sensitivity)
        if level == ALERT_LEVELS[0]:
            out[f"{prefix}hypo_events30"] = float(a.events)
    out[f"{prefix}alert_level30"] = float("nan") if best is None else best[0]
    for k in ("sens30", "precision30", "false_per_day30", "gain_min30"):
        out[f"{prefix}alert_{k}"] = float("nan") if best is None else out[f"{prefix}alert{int(best[0])}_{k}"]
    return out


def _num(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def score_forecast(pred: np.ndarray, data: HeldOut, *, alerts: bool = True) -> dict[str, float]:
    """Scores at +30/+60 against CGM (`rmse30`) and true BG (`bg_rmse30`), time lag, hypo alerts at +30, and
    every figure per age group (`child_rmse30`, ...)."""
    out = _scores(pred, data, prefix="", alerts=alerts)
    for group in AGE_GROUPS:
        m = np.flatnonzero(data.groups == group)
        if len(m):
            out.update(_scores(pred[m], data.take(m), prefix=f"{group}_", alerts=alerts))
    return out


def _scores(pred: np.ndarray, data: HeldOut, *, prefix: str, alerts: bool) -> dict[str, float]:
    out: dict[str, float] = {f"{prefix}windows": float(len(data.x))}
    for j, minutes in enumerate(HORIZONS):
        for ref_name, ref in (("", data.y_cgm), ("bg_", data.y_bg)):
            for k, v in score(pred[:, j], ref[:, j]).items():
                out[f"{prefix}{ref_name}{k}{minutes}"] = v
            if np.isfinite(pred[:, j]).all():
                target_t = data.t + model.HORIZON_STEPS[j] * model.GRID_SECONDS
                out[f"{prefix}{ref_name}lag_min{minutes}"] = metrics.time_lag_minutes(
                    pred[:, j], ref[:, j], target_t, data.patient)
    if alerts and np.isfinite(pred[:, 0]).all() and len(data.x):
        out.update(_alert_scores(pred[:, 0], data, data.y_cgm[:, 0], prefix))
        out.update(_alert_scores(pred[:, 0], data, data.y_bg[:, 0], f"{prefix}bg_"))
    return out


HEADLINE = ("windows", "rmse30", "rmse60", "mae30", "mae60", "mard30", "mard60", "clarke_a30", "clarke_ab30",
            "clarke_ab60", "parkes_ab30", "parkes_ab60", "hypo_sens30", "hypo_spec30", "hypo_sens60", "lag_min30",
            "lag_min60", "bg_rmse30", "bg_rmse60", "bg_mard30", "bg_clarke_ab30", "bg_parkes_ab30", "bg_lag_min30",
            "alert_level30", "alert_sens30", "alert_precision30", "alert_false_per_day30", "alert_gain_min30",
            "bg_alert_sens30", "bg_alert_false_per_day30", "hypo_events30",
            *(f"{g}_{k}" for g in AGE_GROUPS for k in ("rmse30", "bg_rmse30", "mard30", "alert_sens30")))


def headline(scores: dict[str, float]) -> dict[str, float]:
    """The figures a report or a metrics post carries (at most 64: the cloud's limit), from `score_forecast`'s."""
    return {k: scores[k] for k in HEADLINE if k in scores}


def evaluate(weights: np.ndarray, data: HeldOut) -> dict[str, float]:
    """The model's headline scores, with the persistence baseline's RMSE beside them (`persistence_rmse30`)."""
    out = headline(score_forecast(model.predict(weights, data.x), data))
    base = metrics.persistence(data.x[:, :model.HISTORY_STEPS], len(HORIZONS))
    for j, minutes in enumerate(HORIZONS):
        out[f"persistence_rmse{minutes}"] = metrics.rmse(base[:, j], data.y_cgm[:, j])
    return out


def clarke_points(weights: np.ndarray, data: HeldOut, *, max_points: int = 3000, seed: int = 0) -> dict:
    """+30 min forecasts against true blood glucose, for the report's Clarke grid (a fixed-seed sample)."""
    pred = model.predict(weights, data.x)[:, 0]
    ref = data.y_bg[:, 0]
    keep = np.flatnonzero(np.isfinite(pred) & np.isfinite(ref))
    if len(keep) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(keep, max_points, replace=False))
    return {"horizon_min": HORIZONS[0], "reference_kind": "true blood glucose of held-out virtual patients",
            "reference": np.round(ref[keep], 1).tolist(),
            "prediction": np.round(pred[keep], 1).tolist()}
