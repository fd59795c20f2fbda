"""The model card states the DP-SGD unit the round's updates declared (patient by default), never a fixed one."""

from __future__ import annotations

from cloud import model_card
from cloud.lineage import declared_unit


def test_card_unit_follows_the_declared_units() -> None:
    e = {"epsilon_round": 1.0, "delta": 1e-5, "accountant": "prv"}
    assert model_card._unit({"gw-1": {**e, "unit": "patient"}, "h": {**e, "unit": "patient"}}) == "patient"
    assert model_card._unit({"gw-1": {**e, "unit": "window"}}) == "window"
    assert model_card._unit({"gw-1": {**e, "unit": "patient"}, "h": {**e, "unit": "window"}}) == "mixed"
    assert model_card.UNIT_NOTES["patient"].startswith("one patient with all their windows")
    assert "patient-day" in model_card.LDP_NOTE and "labelled event-level option" in model_card.LDP_NOTE


def test_declared_unit_reads_the_signed_report_and_defaults_to_patient() -> None:
    assert declared_unit({"dp": {"unit": "window"}}) == "window"
    assert declared_unit({"dp": {"unit": "patient"}}) == "patient"
    assert declared_unit({"dp": {}}) == "patient" and declared_unit(None) == "patient"
