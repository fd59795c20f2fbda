"""Clarke and Parkes (consensus, type 1) error-grid zones for paired glucose values in mg/dL.

Each pair is (reference, prediction): the x axis is the reference (true blood glucose or the CGM reading),
the y axis the value under test (a forecast or a meter). Zones run A (no effect on clinical action) to E
(dangerous: opposite treatment). Everything here is pure numpy and vectorised; a scalar call is an array
call of length one.

Clarke: W. L. Clarke, D. Cox, L. A. Gonder-Frederick, W. Carter, S. L. Pohl, "Evaluating clinical accuracy
of systems for self-monitoring of blood glucose", Diabetes Care 10(5):622-628, 1987, doi:10.2337/diacare.10.5.622.
The zone lines of its figure 1, tested in this order (the first match wins):

    A  |pred - ref| <= 0.2 * ref, or ref < 70 and pred < 70
    E  ref <= 70 and pred >= 180, or ref >= 180 and pred <= 70
    C  70 <= ref <= 290 and pred >= ref + 110 (upper), or 130 <= ref <= 180 and pred <= 1.4 * ref - 182 (lower)
    D  ref >= 240 and 70 <= pred <= 180 (right), or ref <= 70 and 70 <= pred < 180 (left)
    B  everything else

The upper C line y = x + 110 reaches the top of Clarke's 0-400 plot at x = 290 and is not extended beyond it.

Parkes: J. L. Parkes, S. L. Slatin, S. Pardo, B. H. Ginsberg, "A new consensus error grid to evaluate the
clinical significance of inaccuracies in the measurement of blood glucose", Diabetes Care 23(8):1143-1148,
2000. The published grid had no coordinates; the vertex table used here is the type 1 table of A. Pfützner,
D. C. Klonoff, S. Pardo, J. L. Parkes, "Technical aspects of the Parkes error grid", J Diabetes Sci Technol
7(5):1275-1281, 2013 (PMC3876371), as also used by the open R package `ega` (D. Schmolze, CRAN, file R/ega.R,
which cross-checks every vertex below). The last segment of each line is extended linearly beyond 550 mg/dL,
as Pfützner et al. recommend. Zones are concentric: a point's zone is the outermost boundary it lies strictly
beyond; a point exactly on a boundary belongs to the inner (lower-risk) zone.
"""

from __future__ import annotations

import numpy as np

ZONES = ("A", "B", "C", "D", "E")
HYPO_MGDL = 70.0  # Clarke's hypoglycaemia line, also the DESIGN's hypo threshold

# Parkes type 1 boundaries. Upper lines (above the diagonal) are y = f(x) with x increasing from 0; lower lines
# (below the diagonal) are x = h(y) with y increasing from 0, so each is a single-valued polyline.
_PARKES_T1_UPPER: dict[str, tuple[tuple[float, float], ...]] = {
    "B": ((0, 50), (30, 50), (140, 170), (280, 380), (430, 550)),
    "C": ((0, 60), (30, 60), (50, 80), (70, 110), (260, 550)),
    "D": ((0, 100), (25, 100), (50, 125), (80, 215), (125, 550)),
    "E": ((0, 150), (35, 155), (50, 550)),
}
_PARKES_T1_LOWER: dict[str, tuple[tuple[float, float], ...]] = {  # (x, y) vertices; used as x = h(y)
    "B": ((50, 0), (50, 30), (170, 145), (385, 300), (550, 450)),
    "C": ((120, 0), (120, 30), (260, 130), (550, 250)),
    "D": ((250, 0), (250, 40), (550, 150)),
}


def paired_mgdl(reference: np.ndarray | float, prediction: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Validated 1-D float64 copies of paired glucose values; ValueError on shape mismatch, NaN/inf or negatives."""
    ref = np.atleast_1d(np.asarray(reference, dtype=np.float64))
    pred = np.atleast_1d(np.asarray(prediction, dtype=np.float64))
    if ref.shape != pred.shape:
        raise ValueError(f"reference and prediction shapes differ: {ref.shape} vs {pred.shape}")
    if ref.ndim != 1:
        raise ValueError(f"expected 1-D arrays of paired values, got shape {ref.shape}")
    for name, arr in (("reference", ref), ("prediction", pred)):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise ValueError(f"{name} has {int(bad.sum())} non-finite value(s), first at index {int(np.argmax(bad))}")
        neg = arr < 0
        if neg.any():
            i = int(np.argmax(neg))
            raise ValueError(f"{name} has {int(neg.sum())} negative value(s), first {arr[i]} at index {i}")
    return ref, pred


def clarke_zones(reference: np.ndarray | float, prediction: np.ndarray | float) -> np.ndarray:
    """Clarke zone letter ('A'..'E') of each (reference, prediction) pair in mg/dL."""
    ref, pred = paired_mgdl(reference, prediction)
    zone = np.full(ref.shape, "B", dtype="<U1")
    a = (np.abs(pred - ref) <= 0.2 * ref) | ((ref < HYPO_MGDL) & (pred < HYPO_MGDL))
    e = ((ref <= 70) & (pred >= 180)) | ((ref >= 180) & (pred <= 70))
    c = ((ref >= 70) & (ref <= 290) & (pred >= ref + 110)) | ((ref >= 130) & (ref <= 180) & (pred <= 1.4 * ref - 182))
    d = ((ref >= 240) & (pred >= 70) & (pred <= 180)) | ((ref <= 70) & (pred >= 70) & (pred < 180))
    # assign from the last-tested rule to the first, so the first match wins
    zone[d] = "D"
    zone[c] = "C"
    zone[e] = "E"
    zone[a] = "A"
    return zone


def _polyline(x: np.ndarray, vertices: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Piecewise-linear y(x) through `vertices` (x strictly increasing), last segment extended linearly."""
    xs = np.array([v[0] for v in vertices], dtype=np.float64)
    ys = np.array([v[1] for v in vertices], dtype=np.float64)
    out = np.interp(x, xs, ys)
    beyond = x > xs[-1]
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    out[beyond] = ys[-1] + slope * (x[beyond] - xs[-1])
    return out


def parkes_zones(reference: np.ndarray | float, prediction: np.ndarray | float) -> np.ndarray:
    """Parkes (consensus) type 1 zone letter ('A'..'E') of each (reference, prediction) pair in mg/dL."""
    ref, pred = paired_mgdl(reference, prediction)
    level = np.zeros(ref.shape, dtype=np.int8)
    for letter, vertices in _PARKES_T1_UPPER.items():
        beyond = pred > _polyline(ref, vertices)
        level = np.maximum(level, np.where(beyond, ZONES.index(letter), 0))
    for letter, vertices in _PARKES_T1_LOWER.items():
        swapped = tuple((y, x) for x, y in vertices)  # x = h(y)
        beyond = ref > _polyline(pred, swapped)
        level = np.maximum(level, np.where(beyond, ZONES.index(letter), 0))
    return np.asarray(ZONES)[level]


def zone_fractions(zones: np.ndarray) -> dict[str, float]:
    """Fraction of pairs in each zone A..E, plus 'AB' (A or B). Raises ValueError on an empty set."""
    zones = np.asarray(zones)
    if zones.size == 0:
        raise ValueError("no pairs: zone fractions are undefined")
    unknown = set(np.unique(zones).tolist()) - set(ZONES)
    if unknown:
        raise ValueError(f"unknown zone labels {sorted(unknown)}")
    out = {z: float(np.mean(zones == z)) for z in ZONES}
    out["AB"] = out["A"] + out["B"]
    return out


def clarke_fractions(reference: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """Clarke zone fractions of paired values (keys A..E and AB)."""
    return zone_fractions(clarke_zones(reference, prediction))


def parkes_fractions(reference: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """Parkes type 1 zone fractions of paired values (keys A..E and AB)."""
    return zone_fractions(parkes_zones(reference, prediction))



def parkes_t1_lines() -> list[tuple[str, list[float], list[float]]]:
    """The Parkes type 1 zone boundaries as (outer zone letter, xs, ys) polylines in mg/dL, for plotting: the same
    vertex tables `parkes_zones` uses (Pfützner et al. 2013); every line ends on the edge of the 0-550 plot."""
    tables = (*_PARKES_T1_UPPER.items(), *_PARKES_T1_LOWER.items())
    return [(letter, [float(x) for x, _ in v], [float(y) for _, y in v]) for letter, v in tables]
