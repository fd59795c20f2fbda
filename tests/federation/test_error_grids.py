"""Clarke and Parkes error grids, hypo detection: hand-checked points, boundaries, invariants, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.error_grids import (
    ZONES,
    clarke_fractions,
    clarke_zones,
    parkes_fractions,
    parkes_zones,
    zone_fractions,
)
from federation.glycemic import hypo_detection

# (reference, prediction, zone), each checked by hand against Clarke et al. 1987, figure 1.
CLARKE_POINTS = [
    (100, 100, "A"), (100, 119, "A"), (50, 10, "A"), (65, 69, "A"), (300, 360, "A"), (300, 240, "A"),
    (100, 130, "B"), (100, 50, "B"), (200, 100, "B"), (300, 500, "B"), (120, 180, "B"),
    (100, 250, "C"), (150, 20, "C"), (180, 60, "E"), (160, 30, "C"),
    (50, 100, "D"), (300, 100, "D"), (260, 175, "D"), (60, 75, "D"),
    (50, 200, "E"), (200, 50, "E"), (70, 180, "E"), (400, 0, "E"),
]

# Boundary points: a value exactly on a Clarke line, with the side the rules in the module docstring give.
CLARKE_BOUNDARIES = [
    (100, 120, "A"),   # exactly +20 %
    (100, 80, "A"),    # exactly -20 %
    (69.9, 69.9, "A"), (70, 70, "A"),
    (100, 210, "C"),   # on y = x + 110
    (100, 209.9, "B"),
    (130, 0, "C"),     # lower C line starts at (130, 0)
    (180, 70, "E"),    # corner shared by C lower and E: E is tested first
    (240, 180, "D"), (239.9, 180, "B"),
    (70, 179.9, "D"), (70.1, 179.9, "B"),
    (290, 400, "C"), (291, 401, "B"),  # the upper C line is not extended past x = 290
]

# (reference, prediction, zone), checked by hand against the Pfützner et al. 2013 type 1 vertex table.
PARKES_POINTS = [
    (100, 100, "A"), (100, 126, "A"), (100, 127, "B"), (40, 55, "A"), (40, 62, "B"), (20, 55, "B"), (20, 49, "A"),
    (100, 80, "A"), (100, 60, "B"), (250, 100, "C"), (450, 100, "D"), (200, 100, "B"), (300, 30, "D"),
    (100, 250, "C"), (50, 130, "D"), (40, 300, "E"), (10, 160, "E"),
    (600, 520, "A"), (1000, 1000, "A"),
]

PARKES_BOUNDARIES = [
    (30, 50, "A"), (30, 50.01, "B"),      # vertex of the A/B upper line
    (140, 170, "A"), (140, 170.01, "B"),
    (50, 30, "A"), (50.01, 30, "B"),      # vertex of the A/B lower line
    (0, 150, "D"), (0, 150.01, "E"),      # start of the D/E line
    (250, 40, "C"), (250.01, 40, "D"),
]


@pytest.mark.parametrize(("ref", "pred", "zone"), CLARKE_POINTS + CLARKE_BOUNDARIES)
def test_clarke_hand_checked(ref: float, pred: float, zone: str) -> None:
    assert clarke_zones(ref, pred).tolist() == [zone]


@pytest.mark.parametrize(("ref", "pred", "zone"), PARKES_POINTS + PARKES_BOUNDARIES)
def test_parkes_hand_checked(ref: float, pred: float, zone: str) -> None:
    assert parkes_zones(ref, pred).tolist() == [zone]


def test_every_zone_is_reached() -> None:
    assert {z for _, _, z in CLARKE_POINTS} == set(ZONES)
    assert {z for _, _, z in PARKES_POINTS} == set(ZONES)


def test_vectorised_equals_scalar() -> None:
    rng = np.random.default_rng(3)
    ref, pred = rng.uniform(0, 600, 2000), rng.uniform(0, 600, 2000)
    for grid in (clarke_zones, parkes_zones):
        vec = grid(ref, pred)
        assert vec.shape == (2000,)
        assert vec.tolist() == [grid(r, p)[0] for r, p in zip(ref[:300], pred[:300], strict=True)] + vec[300:].tolist()


def _rank(zones: np.ndarray) -> np.ndarray:
    return np.array([ZONES.index(z) for z in zones])


@settings(max_examples=200, deadline=None)
@given(ref=st.floats(1, 600), frac=st.lists(st.floats(0, 3), min_size=2, max_size=30), up=st.booleans())
def test_zone_never_improves_as_the_error_grows(ref: float, frac: list[float], up: bool) -> None:
    """Moving the prediction away from the reference, on one side, never lowers the zone (both grids)."""
    steps = np.sort(np.asarray(frac))
    pred = ref * (1 + steps) if up else np.clip(ref * (1 - steps), 0, None)
    refs = np.full_like(pred, ref)
    for grid in (clarke_zones, parkes_zones):
        assert np.all(np.diff(_rank(grid(refs, pred))) >= 0), (grid.__name__, ref, pred)


@settings(max_examples=100, deadline=None)
@given(st.floats(0, 2000))
def test_perfect_prediction_is_zone_a(v: float) -> None:
    assert clarke_zones(v, v)[0] == "A"
    assert parkes_zones(v, v)[0] == "A"


def test_fractions_sum_to_one_and_ab() -> None:
    rng = np.random.default_rng(5)
    ref = rng.uniform(40, 400, 5000)
    pred = ref * rng.normal(1, 0.3, 5000).clip(0.01)
    for frac in (clarke_fractions(ref, pred), parkes_fractions(ref, pred)):
        assert sum(frac[z] for z in ZONES) == pytest.approx(1.0)
        assert frac["AB"] == pytest.approx(frac["A"] + frac["B"])
        assert frac["A"] > 0.4 and frac["E"] < 0.05
    assert clarke_fractions([100, 100, 100, 50], [100, 130, 250, 200]) == {
        "A": 0.25, "B": 0.25, "C": 0.25, "D": 0.0, "E": 0.25, "AB": 0.5}


@pytest.mark.parametrize(
    ("ref", "pred", "match"),
    [
        ([100, -1], [100, 100], "reference has 1 negative"),
        ([100, 100], [100, -5], "prediction has 1 negative"),
        ([100, np.nan], [100, 100], "non-finite"),
        ([100, 100], [np.inf, 100], "non-finite"),
        ([100, 100, 100], [100, 100], "shapes differ"),
        (np.ones((2, 2)), np.ones((2, 2)), "1-D"),
        (["a"], ["b"], "could not convert"),
    ],
)
def test_bad_inputs_raise_value_error(ref: object, pred: object, match: str) -> None:
    for fn in (clarke_zones, parkes_zones, clarke_fractions, parkes_fractions, hypo_detection):
        with pytest.raises(ValueError, match=match):
            fn(ref, pred)


def test_zone_fractions_rejects_empty_and_unknown() -> None:
    with pytest.raises(ValueError, match="undefined"):
        clarke_fractions([], [])
    with pytest.raises(ValueError, match="unknown zone"):
        zone_fractions(np.array(["A", "F"]))
    assert clarke_zones([], []).shape == (0,)


def test_hypo_detection_counts() -> None:
    ref = np.array([60, 65, 69.9, 70, 100, 150, 50])
    pred = np.array([65, 80, 60, 69, 120, 150, 50])
    det = hypo_detection(ref, pred)
    assert (det.true_positive, det.false_negative, det.true_negative, det.false_positive) == (3, 1, 2, 1)
    assert det.sensitivity == pytest.approx(3 / 4)
    assert det.specificity == pytest.approx(2 / 3)
    assert det.as_dict()["sensitivity"] == pytest.approx(0.75)


def test_hypo_detection_undefined_rates_are_none() -> None:
    det = hypo_detection([100, 120], [100, 60])
    assert det.sensitivity is None and det.specificity == 0.5
    assert hypo_detection([50], [50]).specificity is None
    with pytest.raises(ValueError, match="threshold"):
        hypo_detection([50], [50], threshold=float("nan"))
