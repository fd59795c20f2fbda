"""Scenario files: shipped ones load, and every kind of mistake is named by its field."""

from __future__ import annotations

import pytest

from federation.errors import ConfigError
from sim.scenario import SHIPPED, at_scale, load_scenario, parse_scenario

MINIMAL = """
[scenario]
name = "t"
seed = 1
days = 1.0
accel = 3600
[[gateways]]
id = "gw-1"
devices = 2
[[gateways]]
id = "gw-2"
devices = 2
[[hospitals]]
id = "hosp-1"
patients = 2
[rounds]
count = 2
"""


@pytest.mark.parametrize("path", sorted(SHIPPED.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_scenario_loads(path) -> None:  # noqa: ANN001
    s = load_scenario(path.stem)
    assert s.scenario.name == path.stem
    assert len(s.participants) >= 2 or s.scale is not None


def test_minimal_scenario_gets_defaults() -> None:
    s = parse_scenario(MINIMAL)
    assert s.participants == ["gw-1", "gw-2", "hosp-1"]
    assert s.privacy.ldp_mechanism == "hybrid" and s.privacy.dp_delta == 1e-5
    assert s.rounds.quorum == 3 and s.faults == []


@pytest.mark.parametrize("patch, field", [
    (("count = 2", "count = 0"), "rounds.count"),
    (("devices = 2", "devices = -1"), "gateways[0].devices"),
    (("seed = 1", 'seed = "x"'), "scenario.seed"),
    (("[rounds]", "[rounds]\nquorum = 5"), "quorum 5 exceeds"),
    (('id = "hosp-1"', 'id = "gw-1"'), "repeated"),
    (("[rounds]", "[privacy]\nldp_mechanism = \"gauss\"\n[rounds]"), "privacy.ldp_mechanism"),
    (("[rounds]", "[privacy]\nldp_mechanism = \"laplace\"\nldp_epsilon = 0\n[rounds]"), "privacy.ldp_epsilon"),
    (("[rounds]", "[privacy]\nldp_mechanism = \"none\"\nldp_epsilon = 4.0\n[rounds]"), "must be omitted"),
    (("[rounds]", "[privacy]\nldp_epsilon = 8.0\n[rounds]"), "ldp_unit = \"reading\""),  # per reading, unlabelled
    (("[rounds]", "[privacy]\nldp_unit = \"reading\"\n[rounds]"), "ldp_epsilon is required"),
    (("[rounds]", "[privacy]\nldp_unit = \"window\"\n[rounds]"), "privacy.ldp_unit"),
    (("[rounds]", "[privacy]\nldp_epsilon_per_day = -1\n[rounds]"), "privacy.ldp_epsilon_per_day"),
    (("[rounds]", "[[faults]]\nkind = \"meteor\"\nat_hours = 1\n[rounds]"), "faults[0].kind"),
    (("[rounds]", "[[faults]]\nkind = \"gateway_crash\"\nat_hours = 1\ntarget = \"gw-9\"\n[rounds]"), "gateway"),
    (("[rounds]", "[[faults]]\nkind = \"broker_outage\"\nat_hours = 99\n[rounds]"), "after the scenario ends"),
    (("[rounds]", "[extra]\nx = 1\n[rounds]"), "extra"),
])
def test_mistakes_are_named(patch: tuple[str, str], field: str) -> None:
    text = MINIMAL.replace(*patch, 1)
    with pytest.raises(ConfigError) as info:
        parse_scenario(text, source="bad.toml")
    assert field in str(info.value) and "bad.toml" in str(info.value)


def test_not_toml_and_unknown_names() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_scenario("[[[")
    with pytest.raises(ConfigError, match="shipped"):
        load_scenario("no-such-scenario")


def test_ldp_can_be_switched_off_in_toml() -> None:
    s = parse_scenario(MINIMAL.replace("[rounds]", '[privacy]\nldp_mechanism = "none"\n[rounds]'))
    assert s.privacy.ldp_mechanism == "none" and s.privacy.ldp_epsilon is None


SCALE = """
[scenario]
name = "s"
seed = 1
days = 0.1
accel = 100000
[scale]
participants = [3, 5]
patients = 11
[rounds]
count = 1
"""


def test_scale_expands_into_hospitals_that_split_the_cohort() -> None:
    s = parse_scenario(SCALE)
    assert s.participants == []
    five = at_scale(s, 5)
    assert [h.id for h in five.hospitals] == ["h-001", "h-002", "h-003", "h-004", "h-005"]
    assert [h.patients for h in five.hospitals] == [3, 2, 2, 2, 2]  # 11 patients, none lost, none repeated
    assert five.rounds.quorum == 5 and five.scale is None and five.scenario.name == "s-5"
    with pytest.raises(ConfigError, match="no \\[scale\\] section"):
        at_scale(five, 3)


@pytest.mark.parametrize("patch, field", [
    (("participants = [3, 5]", "participants = [2, 50]"), "between 3 and patients"),
    (("participants = [3, 5]", "participants = [5, 5]"), "distinct"),
    (("participants = [3, 5]", "participants = [5]"), "scale.participants"),
    (("[rounds]", "[[hospitals]]\nid = \"h-1\"\npatients = 2\n[rounds]"), "generates its participants"),
    (("[scale]\nparticipants = [3, 5]\npatients = 11\n", ""), "at least 3 participants"),
])
def test_scale_mistakes_are_named(patch: tuple[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_scenario(SCALE.replace(*patch, 1), source="bad.toml")
    assert field in str(info.value)


def test_the_device_default_is_one_budget_per_patient_day() -> None:
    """The default privacy unit of a scenario's devices is the patient-day (8); per reading only when labelled."""
    from sim.privacy_summary import describe, device_plan

    s = parse_scenario(MINIMAL)
    assert (s.privacy.ldp_unit, s.privacy.ldp_epsilon_per_day, s.privacy.ldp_epsilon) == ("patient-day", 8.0, None)
    plan = device_plan(s)
    assert plan["unit"] == "patient-day" and plan["covers"] == ["glucose", "insulin", "carbs"]
    # by hand: glucose 3/4 of 8 over 288 readings, insulin and carbs 1/8 of 8 over 24 hourly releases each
    assert plan["streams"]["glucose"]["epsilon_per_release"] == pytest.approx(6 / 288)
    assert plan["streams"]["insulin"]["epsilon_per_release"] == pytest.approx(1 / 24)
    assert plan["epsilon_per_patient_day_planned"] == pytest.approx(8.0)
    assert "8 per patient-day" in describe(s)
    labelled = parse_scenario(MINIMAL.replace("[rounds]", '[privacy]\nldp_unit = "reading"\nldp_epsilon = 8.0\n'
                                                          '[rounds]'))
    plan = device_plan(labelled)
    assert plan["unit"] == "reading" and plan["epsilon_per_day_if_every_reading"] == 2304.0
    assert "event-level" in describe(labelled)
    for name in ("demo", "clinic-week", "faults", "scale"):  # every shipped scenario states its unit
        assert device_plan(load_scenario(name))["unit"] in ("patient-day", "reading")
    assert device_plan(load_scenario("demo"))["unit"] == "patient-day"


def test_demo_overrides_keep_the_unit_straight() -> None:
    from pathlib import Path

    from sim.demo import DemoConfig

    p = DemoConfig(out=Path("x"), ldp_epsilon=4.0).scenario().privacy
    assert (p.ldp_unit, p.ldp_epsilon_per_day, p.ldp_epsilon) == ("patient-day", 4.0, None)
    p = DemoConfig(out=Path("x"), ldp_unit="reading", ldp_epsilon=2.0).scenario().privacy
    assert (p.ldp_unit, p.ldp_epsilon) == ("reading", 2.0)
    p = DemoConfig(out=Path("x"), ldp_mechanism="none").scenario().privacy
    assert p.ldp_mechanism == "none" and p.ldp_epsilon is None
