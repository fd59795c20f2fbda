"""Gateway and cloud side of the patient-day release: sum many releases, undo the lattice, fit the forecaster.

Each ``device.day_release.DayRelease`` decodes to an unbiased estimate of its day's clipped Gram matrix
svec(G) (``gram-*``) or, for ``window-sample``, of the sampled windows' outer products after the
errors-in-variables correction E[z~ z~^T] = z z^T + var I (the noise variance is known exactly from the
release parameters; cf. Duchi, Jordan, Wainwright, JASA 2018, on debiasing locally private regression). Sums
of estimates stay unbiased and their noise variance is the sum of the releases' (independent noise), so a
``DayStats`` carries both; two of them merge by addition, which is what the cloud's encrypted aggregation
computes (``to_vector`` / ``from_vector``).

``fit_forecaster`` solves ridge regression on the summed Gram: the feature block is projected onto the PSD
cone (post-processing), and the ridge is lambda = ridge_scale * s * sqrt(n_features), s the standard deviation
of the summed noise per svec coordinate: about 0.7 of the expected spectral norm of the noise block (a Wigner
matrix with entry variance s^2/2 off the diagonal has norm about 2 sqrt(n s^2/2); Bai and Yin 1988), so
directions the noise swamps shrink towards persistence (coefficient 0 = "no change"), as AdaSSP does (Y.-X.
Wang, UAI 2018). Post-processing throughout: nothing here costs privacy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from device.day_release import (
    MECHANISMS,
    SAMPLE_WINDOWS,
    SVEC_DIM,
    DayRelease,
    ReleaseParams,
    svec,
    unsvec,
)
from federation import day_features as F
from federation.errors import SchemaError

FORECASTER_VERSION = 1
FAMILIES = {"gram-gauss": "gram", "gram-laplace": "gram", "window-sample": "window"}


def _family(mechanism: str) -> str:
    if mechanism not in FAMILIES:
        raise SchemaError(f"mechanism: expected one of {MECHANISMS}, got {mechanism!r}")
    return FAMILIES[mechanism]


def decode_values(values: np.ndarray, *, params: ReleaseParams) -> tuple[np.ndarray, float]:
    """Lattice integers (n, coords) of one mechanism -> (sum over the n of the svec estimates, noise variance of
    that sum per svec coordinate)."""
    q = np.asarray(values, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] != params.coords:
        raise SchemaError(f"q: expected (releases, {params.coords}) integers, got shape {q.shape}")
    var = params.noise_variance
    x = q * params.lattice_step
    if params.mechanism != "window-sample":
        return x.sum(axis=0), var * len(q)
    z = x.reshape(len(q), SAMPLE_WINDOWS, F.DIM)
    gram = np.einsum("nki,nkj->ij", z, z) - len(q) * SAMPLE_WINDOWS * var * np.eye(F.DIM)
    # Var of z~_i z~_j (i != j) is about var^2 (+ var (z_i^2 + z_j^2)), of z~_i^2 about 2 var^2 (+ 4 var z_i^2):
    # in svec coordinates 2 var^2 per window; the signal terms are left out (small against var at any epsilon).
    return svec(gram), 2 * var * var * len(q) * SAMPLE_WINDOWS


@dataclass
class DayStats:
    """A running sum of decoded releases of one family: what a node trains on."""

    family: str
    releases: int = 0
    total: np.ndarray = field(default_factory=lambda: np.zeros(SVEC_DIM))
    noise_var: float = 0.0  # variance of ``total``'s noise per svec coordinate
    _seen: set[str] = field(default_factory=set, repr=False)

    def add(self, release: DayRelease, *, key: str | None = None) -> None:
        """Add one release; ``key`` (e.g. "device/day") refuses a second release of the same patient-day."""
        if not isinstance(release, DayRelease):
            raise TypeError(f"release must be a DayRelease, got {type(release).__name__}")
        if _family(release.mechanism) != self.family:
            raise SchemaError(f"mech: a {release.mechanism!r} release cannot join {self.family!r} statistics")
        if key is not None:
            if key in self._seen:
                raise SchemaError(f"key: a second release for patient-day {key!r}")
            self._seen.add(key)
        self.add_values(np.asarray([release.values]), params=release.params)

    def add_values(self, values: np.ndarray, *, params: ReleaseParams) -> None:
        """Add many releases of one mechanism and budget at once ((n, coords) lattice integers)."""
        if _family(params.mechanism) != self.family:
            raise SchemaError(f"mech: {params.mechanism!r} cannot join {self.family!r} statistics")
        total, var = decode_values(values, params=params)
        self.total = self.total + total
        self.noise_var += var
        self.releases += len(values)

    def merge(self, other: DayStats) -> DayStats:
        if other.family != self.family:
            raise SchemaError(f"family: cannot merge {other.family!r} into {self.family!r}")
        return DayStats(self.family, self.releases + other.releases, self.total + other.total,
                        self.noise_var + other.noise_var)

    def gram(self) -> np.ndarray:
        return unsvec(self.total)

    def to_vector(self) -> np.ndarray:
        """[releases, noise_var, svec total...]: every entry adds up across nodes (the encrypted sum)."""
        return np.concatenate([[float(self.releases), self.noise_var], self.total])

    @classmethod
    def from_vector(cls, family: str, vector: np.ndarray) -> DayStats:
        v = np.asarray(vector, dtype=np.float64)
        if v.shape != (SVEC_DIM + 2,) or not np.isfinite(v).all():
            raise SchemaError(f"vector: expected {SVEC_DIM + 2} finite numbers, got shape {v.shape}")
        if family not in set(FAMILIES.values()):
            raise SchemaError(f"family: expected 'gram' or 'window', got {family!r}")
        return cls(family, int(round(v[0])), v[2:].copy(), float(v[1]))


def aggregate(releases: Iterable[DayRelease]) -> DayStats:
    """Sum releases of one family (mixed budgets allowed: each contributes its own known noise variance)."""
    stats: DayStats | None = None
    for r in releases:
        if stats is None:
            stats = DayStats(_family(r.mechanism))
        stats.add(r)
    if stats is None:
        raise SchemaError("releases: none to aggregate")
    return stats


def clean_stats(grams: np.ndarray) -> DayStats:
    """Non-private statistics from exact Gram matrices (days, DIM, DIM): the same model without any noise."""
    g = np.asarray(grams, dtype=np.float64)
    return DayStats("gram", len(g), svec(g.sum(axis=0)), 0.0)


@dataclass(frozen=True)
class LinearForecaster:
    """Ridge forecaster over ``federation.day_features``: predicted change = z[:13] @ coef (standardised)."""

    coef: np.ndarray  # (N_FEATURES, 2)
    ridge: float
    releases: int
    spec: str = F.FEATURE_SPEC

    def predict_vectors(self, z: np.ndarray) -> np.ndarray:
        """Window vectors (n, DIM or N_FEATURES) -> predicted changes (n, 2) in mg/dL."""
        return F.to_mgdl(np.asarray(z)[:, : F.N_FEATURES] @ self.coef)

    def predict(self, glucose: np.ndarray, insulin: np.ndarray, carbs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Forecasts at +30/+60 min (n, 2) mg/dL for every complete window of one patient's grid, and the mask of
        anchor steps they belong to (the same windows as ``federation.windows.make_windows``)."""
        z, valid = F.window_vectors(glucose, insulin, carbs, day_only=False)
        g = np.asarray(glucose, dtype=np.float64)
        last = np.clip(g[valid], *F.GLUCOSE_RANGE)
        return last[:, None] + self.predict_vectors(z[valid]), valid

    def to_dict(self) -> dict:
        return {"v": FORECASTER_VERSION, "spec": self.spec, "coef": self.coef.tolist(), "ridge": self.ridge,
                "releases": self.releases}

    @classmethod
    def from_dict(cls, doc: object) -> LinearForecaster:
        if not isinstance(doc, dict) or doc.get("v") != FORECASTER_VERSION:
            raise SchemaError("v: not a linear forecaster of a known version")
        if doc.get("spec") != F.FEATURE_SPEC:
            raise SchemaError(f"spec: expected {F.FEATURE_SPEC!r}, got {doc.get('spec')!r}")
        coef = np.asarray(doc.get("coef"), dtype=np.float64)
        if coef.shape != (F.N_FEATURES, 2) or not np.isfinite(coef).all():
            raise SchemaError(f"coef: expected {F.N_FEATURES}x2 finite numbers, got shape {coef.shape}")
        return cls(coef, float(doc.get("ridge", 0.0)), int(doc.get("releases", 0)))


def adaptive_ridge_scale(stats: DayStats) -> float:
    """Ridge multiplier from the signal-to-noise ratio r = G[bias, bias] / s (total window weight over the noise
    sd): clip(3 / r, 1, 4). Tuned on simulated validation patients (neither training nor held-out; table in
    docs/ldp-release.md): the best multiplier was 1 for r >= 3, 2 for r in 1-3 and 4 below 1."""
    if stats.noise_var <= 0:
        return 1.0
    ratio = float(stats.gram()[0, 0]) / math.sqrt(stats.noise_var)
    return 4.0 if ratio <= 0 else min(4.0, max(1.0, 3.0 / ratio))


def fit_forecaster(stats: DayStats, *, ridge_scale: float | None = None) -> LinearForecaster:
    """Ridge regression of (dy30, dy60) on the features from the summed Gram (see the module docstring);
    ``ridge_scale`` None picks it from the signal-to-noise ratio (``adaptive_ridge_scale``)."""
    if ridge_scale is None:
        ridge_scale = adaptive_ridge_scale(stats)
    if not ridge_scale >= 0:
        raise ValueError(f"ridge_scale must be >= 0, got {ridge_scale}")
    g = stats.gram()
    nx = F.N_FEATURES
    a, b = g[:nx, :nx], g[:nx, nx:]
    w, v = np.linalg.eigh((a + a.T) / 2)
    a = (v * np.maximum(w, 0.0)) @ v.T
    noise_sd = math.sqrt(max(stats.noise_var, 0.0))
    lam = ridge_scale * noise_sd * math.sqrt(nx)
    lam = max(lam, 1e-9 * max(float(np.trace(a)), 1.0))  # numerical floor for noise-free statistics
    coef = np.linalg.solve(a + lam * np.eye(nx), b)
    return LinearForecaster(coef, lam, stats.releases)
