"""Readable column names (with units) for the raw keys of a replay's per-round rows.

Metric keys are composed as `[<age group>_][bg_]<metric><horizon>` (`sim/evaluate.py`): `bg_` scores against
the held-out patients' true blood glucose instead of their CGM, the horizon is 30 or 60 minutes ahead.
"""

from __future__ import annotations

import re

METRICS = {  # base name -> (words, unit); fractions are shown as they are stored (0..1)
    "rmse": ("RMSE", "mg/dL"), "mae": ("MAE", "mg/dL"), "mard": ("MARD", "%"),
    "clarke_a": ("Clarke A", "fraction"), "clarke_ab": ("Clarke A+B", "fraction"),
    "parkes_ab": ("Parkes A+B", "fraction"), "hypo_sens": ("hypo sensitivity", "fraction"),
    "hypo_spec": ("hypo specificity", "fraction"), "lag_min": ("time lag", "min"),
    "alert_level": ("hypo alert level", "mg/dL"), "alert_sens": ("hypo alert sensitivity", "fraction"),
    "alert_precision": ("hypo alert precision", "fraction"),
    "alert_false_per_day": ("false hypo alerts", "per patient-day"), "alert_gain_min": ("hypo alert lead", "min"),
    "hypo_events": ("hypo events", "count"), "persistence_rmse": ("persistence RMSE", "mg/dL"),
    "linear_rmse": ("linear baseline RMSE", "mg/dL"), "centralised_rmse": ("centralised RMSE", "mg/dL"),
}
OTHER = {
    "round": "round", "state": "cloud state", "model_version": "model version", "model_status": "model status",
    "failure_reason": "why the round failed", "gates_failed": "gates that held it back (cloud's words)",
    "bytes_up": "uploaded (bytes)", "seconds": "round wall time (s)", "round_seconds": "open to model (s)",
    "windows": "held-out windows scored",
}
_GROUPS = ("child", "adolescent", "adult")
_KEY = re.compile(r"^(?:(?P<group>child|adolescent|adult)_)?(?P<bg>bg_)?(?P<base>[a-z_]+?)(?P<h>30|60)$")


def column_label(key: str) -> str:
    """'bg_rmse30' -> 'RMSE +30 min vs true BG (mg/dL)'; unknown keys come back with spaces for underscores."""
    if key in OTHER:
        return OTHER[key]
    m = _KEY.match(key)
    if m and m["base"] in METRICS:
        words, unit = METRICS[m["base"]]
        text = f"{words} +{m['h']} min"
        if m["bg"]:
            text += " vs true BG"
        if m["group"]:
            text = f"{m['group']}: {text}"
        return f"{text} ({unit})"
    for group in _GROUPS:
        if key == f"{group}_windows":
            return f"{group}: held-out windows scored"
    return key.replace("_", " ")
