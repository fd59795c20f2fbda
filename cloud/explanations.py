"""Explanations of a model version: attributions of its +30 min forecasts to the input families, on the cloud's
synthetic validation cohort only (never on a participant's data, which the cloud never holds).

Method: Integrated Gradients (M. Sundararajan, A. Taly, Q. Yan, "Axiomatic Attribution for Deep Networks", ICML
2017) as Captum implements it (`captum.attr.IntegratedGradients`), on the torch twin of the forecaster
(`federation.model.to_torch`) wrapped to take raw inputs (mg/dL, units, grams) and give mg/dL. The baseline is the
validation cohort's mean window, so a window's attributions add up (IG's completeness axiom, eq. 3 there, up to
the Gauss-Legendre quadrature error reported as ``completeness_gap_mgdl``) to its forecast minus the forecast for
that mean window. Attributions are summed per input family (`FAMILIES`).

- Global importance (model card): mean |attribution| per family over at most `MAX_GLOBAL_WINDOWS` validation
  windows, and its share of the total.
- Local explanations: every window whose +30 min forecast is hypoglycaemic (< 70 mg/dL) or of low confidence
  (the `LOW_CONFIDENCE_QUANTILE` of forecasts least stable under CGM sensor noise), at most `MAX_LOCAL` of them
  (hypo forecasts first, lowest first; then the least stable); the counts before the cap are kept.

Pure computation; `cloud.explainer` runs it off the request path for every new version and stores the document.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from federation import model as forecaster
from federation.error_grids import HYPO_MGDL
from federation.errors import SchemaError
from federation.features import FEATURE_NAMES

log = logging.getLogger(__name__)

HORIZON_INDEX = 0  # +30 min
N_STEPS = 32  # Gauss-Legendre points of the IG path integral; the gap it leaves is measured and stored
MAX_GLOBAL_WINDOWS = 1000  # evenly spaced validation windows for global importance
MAX_LOCAL = 60  # local explanations kept per version
LOW_CONFIDENCE_QUANTILE = 0.95  # windows whose forecast spread under sensor noise is in the top 5 %
NOISE_DRAWS = 16
# CGM sensor noise for the stability probe: relative SD 8.2 %, the Dexcom G7 label's MARD for adults (a MARD is a
# mean absolute relative error; used here as the scale of the perturbation, not as a sensor model)
SENSOR_NOISE_RELATIVE = 0.082
NOISE_SEED = 0  # explanations are reproducible; this is not privacy randomness (nothing private is perturbed)
TOP_INPUTS = 5


def _family_of(name: str) -> str:
    if name.startswith(("iob", "insulin")) or name == "since_bolus":
        return "insulin on board"
    if name.startswith(("cob", "carb_effect", "carbs")) or name == "since_meal":
        return "carbs on board"
    if name.startswith("tod_"):
        return "time of day"
    return "patient context"  # TDD, carb ratio, events known, the 24-h glucose summary


INPUT_NAMES = tuple(f"glucose_t-{5 * (forecaster.HISTORY_STEPS - 1 - k)}min" for k in range(forecaster.HISTORY_STEPS)
                    ) + FEATURE_NAMES
FAMILIES: dict[str, tuple[int, ...]] = {"glucose history": tuple(range(forecaster.HISTORY_STEPS))}
for _k, _name in enumerate(FEATURE_NAMES):
    FAMILIES.setdefault(_family_of(_name), ())
    FAMILIES[_family_of(_name)] += (forecaster.HISTORY_STEPS + _k,)
assert sorted(i for ix in FAMILIES.values() for i in ix) == list(range(forecaster.N_INPUTS))


@dataclass(frozen=True)
class Attributions:
    values: np.ndarray  # (n, N_INPUTS) mg/dL
    forecast: np.ndarray  # (n,) mg/dL at +30 min
    baseline_forecast: float  # mg/dL at +30 min for the baseline window
    gap: np.ndarray  # (n,) |sum of attributions - (forecast - baseline forecast)|, mg/dL


def _mgdl_module(weights: np.ndarray):  # -> torch.nn.Module (torch imported here only)
    import torch

    net = forecaster.to_torch(weights).double()
    center = torch.tensor(forecaster.INPUT_CENTER, dtype=torch.float64)
    scale = torch.tensor(forecaster.INPUT_SCALE, dtype=torch.float64)

    class MgdlForecast(torch.nn.Module):
        """Raw inputs -> +30 min forecast in mg/dL (the numpy `predict`, differentiable)."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = self.net((x - center) / scale)[:, HORIZON_INDEX]
            return z * forecaster.GLUCOSE_SCALE + forecaster.GLUCOSE_CENTER

    return MgdlForecast().eval()


def attribute(weights: np.ndarray, x: np.ndarray, baseline: np.ndarray, *, n_steps: int = N_STEPS) -> Attributions:
    """Integrated-Gradients attributions (mg/dL) of the +30 min forecasts of `x` against one `baseline` window."""
    import torch
    from captum.attr import IntegratedGradients

    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != forecaster.N_INPUTS or baseline.shape != (forecaster.N_INPUTS,):
        raise SchemaError(f"explanations need windows (n, {forecaster.N_INPUTS}) and one baseline window, got "
                          f"{x.shape} and {baseline.shape}")
    module = _mgdl_module(weights)
    inputs = torch.tensor(x, dtype=torch.float64)
    base = torch.tensor(np.broadcast_to(baseline, x.shape).copy(), dtype=torch.float64)
    attr, delta = IntegratedGradients(module).attribute(inputs, baselines=base, n_steps=n_steps,
                                                        return_convergence_delta=True)
    with torch.no_grad():
        forecast = module(inputs).numpy()
        base_forecast = float(module(base[:1]).numpy()[0])
    return Attributions(attr.detach().numpy(), forecast, base_forecast, np.abs(delta.detach().numpy()))


def by_family(values: np.ndarray) -> np.ndarray:
    """(n, N_INPUTS) attributions -> (n, len(FAMILIES)) sums per family, in `FAMILIES` order."""
    return np.stack([values[:, list(ix)].sum(axis=1) for ix in FAMILIES.values()], axis=1)


def forecast_spread(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """SD (mg/dL) of each +30 min forecast over `NOISE_DRAWS` copies of its glucose history with sensor noise."""
    rng = np.random.default_rng(NOISE_SEED)
    h = forecaster.HISTORY_STEPS
    draws = []
    for _ in range(NOISE_DRAWS):
        noisy = x.copy()
        noisy[:, :h] = np.clip(noisy[:, :h] * (1 + SENSOR_NOISE_RELATIVE * rng.standard_normal((len(x), h))), 0, None)
        draws.append(forecaster.predict(weights, noisy)[:, HORIZON_INDEX])
    return np.std(np.stack(draws), axis=0)


def _top(values: np.ndarray) -> list[dict]:
    order = np.argsort(-np.abs(values))[:TOP_INPUTS]
    return [{"input": INPUT_NAMES[i], "mgdl": round(float(values[i]), 3)} for i in order]


def explain(weights: np.ndarray, x: np.ndarray, *, groups: np.ndarray | None = None, meta: dict | None = None,
            max_global: int = MAX_GLOBAL_WINDOWS, max_local: int = MAX_LOCAL, n_steps: int = N_STEPS) -> dict:
    """The explanation document of one version on validation windows `x` (JSON-ready)."""
    import captum

    weights = np.asarray(weights, dtype=np.float32)
    x = np.asarray(x, dtype=np.float64)
    baseline = x.mean(axis=0)
    sample = np.unique(np.linspace(0, len(x) - 1, min(max_global, len(x))).round().astype(int))
    glob = attribute(weights, x[sample], baseline, n_steps=n_steps)
    fam = np.abs(by_family(glob.values)).mean(axis=0)
    total = float(fam.sum()) or 1.0
    per_input = np.abs(glob.values).mean(axis=0)

    pred = forecaster.predict(weights, x)[:, HORIZON_INDEX]
    spread = forecast_spread(weights, x)
    cut = float(np.quantile(spread, LOW_CONFIDENCE_QUANTILE))
    hypo = np.flatnonzero(pred < HYPO_MGDL)
    low = np.flatnonzero(spread >= cut)
    first = hypo[np.argsort(pred[hypo])]  # hypo forecasts, lowest first; then the least stable others
    rest = [i for i in low[np.argsort(-spread[low])] if pred[i] >= HYPO_MGDL]
    chosen = np.concatenate([first, np.array(rest, dtype=int)])[:max_local].astype(int)
    local_items: list[dict] = []
    gaps = [glob.gap]
    if len(chosen):
        loc = attribute(weights, x[chosen], baseline, n_steps=n_steps)
        gaps.append(loc.gap)
        fam_loc = by_family(loc.values)
        for j, i in enumerate(chosen):
            reasons = [r for r, ok in (("hypo", pred[i] < HYPO_MGDL), ("low_confidence", spread[i] >= cut)) if ok]
            local_items.append({
                "window": int(i), "group": None if groups is None else str(groups[i]), "reasons": reasons,
                "last_cgm_mgdl": round(float(x[i, forecaster.LAST_GLUCOSE]), 1),
                "forecast30_mgdl": round(float(loc.forecast[j]), 2), "spread30_mgdl": round(float(spread[i]), 2),
                "families": {f: round(float(v), 3) for f, v in zip(FAMILIES, fam_loc[j], strict=True)},
                "top_inputs": _top(loc.values[j]), "completeness_gap_mgdl": round(float(loc.gap[j]), 6)})
    return {
        "method": "integrated gradients", "library": f"captum {captum.__version__}",
        "n_steps": n_steps, "horizon_min": 30, "architecture": forecaster.ARCHITECTURE,
        "baseline": "the validation cohort's mean window",
        "baseline_forecast30_mgdl": round(glob.baseline_forecast, 2),
        "data": "the cloud's synthetic validation cohort (no participant data)", "validation_set": meta,
        "families": {f: list(INPUT_NAMES[i] for i in ix) for f, ix in FAMILIES.items()},
        "global": {"windows": len(sample),
                   "families": {f: {"mean_abs_mgdl": round(float(v), 3), "share": round(float(v) / total, 4)}
                                for f, v in sorted(zip(FAMILIES, fam, strict=True), key=lambda p: -p[1])},
                   "top_inputs": [{"input": INPUT_NAMES[i], "mean_abs_mgdl": round(float(per_input[i]), 3)}
                                  for i in np.argsort(-per_input)[:8]]},
        "local": {"hypo_forecasts": int(len(hypo)), "low_confidence_forecasts": int(len(low)),
                  "low_confidence_spread_mgdl": round(cut, 3), "kept": len(local_items), "cap": max_local,
                  "criteria": f"+30 min forecast below {HYPO_MGDL:g} mg/dL, or its SD over {NOISE_DRAWS} copies "
                              f"with {SENSOR_NOISE_RELATIVE:.1%} relative CGM noise in the top "
                              f"{1 - LOW_CONFIDENCE_QUANTILE:.0%} of the validation set",
                  "items": local_items},
        "completeness_gap_mgdl": round(float(max(float(g.max()) for g in gaps if len(g))), 6),
    }


def safe_explain(weights: np.ndarray, x: np.ndarray, **kw: object) -> dict | None:
    """`explain`, or None (logged) when it cannot run: diverged weights, Captum missing."""
    try:
        doc = explain(weights, x, **kw)  # type: ignore[arg-type]
    except (ImportError, SchemaError, ValueError, RuntimeError) as exc:
        log.warning("explanations failed: %s", exc)
        return None
    if not np.isfinite(doc["completeness_gap_mgdl"]):
        log.warning("explanations failed: non-finite attributions (diverged weights)")
        return None
    return doc
