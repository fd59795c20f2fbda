"""Firmware profiles: every shipped profile validates; every missing or impossible field is named."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest

from device.errors import ProfileError
from device.profiles import PROFILE_DIR, SCHEMA, list_profiles, load_profile, profile_from_dict
from federation.cli import main

G7 = tomllib.loads((PROFILE_DIR / "dexcom-g7.toml").read_text())


def test_shipped_profiles_load_and_match_public_facts() -> None:
    profiles = {p.name: p for p in list_profiles()}
    assert {"dexcom-g7", "libre-3", "pi-zero-2w", "pi-4"} <= set(profiles)
    g7, libre = profiles["dexcom-g7"], profiles["libre-3"]
    assert (g7.sample_interval_s, g7.ram_kb, g7.flash_kb, g7.battery_mah) == (300, 64, 512, 25)
    assert g7.warmup_s == 1800 and g7.session_s == 10.5 * 86400 and not g7.runs_forecaster
    assert libre.sample_interval_s == 60 and libre.session_s == 14 * 86400
    assert profiles["pi-4"].runs_forecaster and profiles["pi-4"].mains_powered
    for p in profiles.values():
        assert p.daily_cap >= p.epsilon_per_reading


@pytest.mark.parametrize("section,key", sorted(SCHEMA))
def test_missing_field_is_named(section: str, key: str) -> None:
    doc = copy.deepcopy(G7)
    del doc[section][key]
    with pytest.raises(ProfileError, match=f"{section}.{key} is missing"):
        profile_from_dict(doc)


BAD = [
    ("sensor", "sample_interval_s", 0, "sensor.sample_interval_s"),
    ("sensor", "sample_interval_s", 1.5, "sensor.sample_interval_s"),
    ("sensor", "warmup_s", 10_000_000, "sensor.warmup_s"),
    ("sensor", "session_s", -1, "sensor.session_s"),
    ("device", "ram_kb", float("nan"), "device.ram_kb"),
    ("device", "kind", "toaster", "device.kind"),
    ("storage", "capacity_readings", 100_000, "storage.capacity_readings"),
    ("storage", "flash_kb", 4096, "storage.flash_kb"),
    ("uplink", "batch_size", 0, "uplink.batch_size"),
    ("uplink", "batch_size", 10_000, "uplink.batch_size"),
    ("uplink", "bytes_per_s", 0, "uplink.bytes_per_s"),
    ("energy", "battery_mah", 0, "energy.battery_mah"),
    ("energy", "per_reading_uj", 1e12, "energy.per_reading_uj"),
    ("energy", "mains_powered", "yes", "energy.mains_powered"),
    ("model", "max_model_bytes", 1000, "model.max_model_bytes"),
    ("ldp", "mechanism", "gaussian", "ldp.mechanism"),
    ("ldp", "epsilon_per_reading", 0, "ldp.epsilon_per_reading"),
    ("ldp", "daily_cap", 1.0, "ldp.daily_cap"),
    ("ldp", "daily_cap", True, "ldp.daily_cap"),
]


@pytest.mark.parametrize("section,key,value,named", BAD)
def test_impossible_value_is_named(section: str, key: str, value: object, named: str) -> None:
    doc = copy.deepcopy(G7)
    doc[section][key] = value
    with pytest.raises(ProfileError, match=named.replace(".", r"\.")):
        profile_from_dict(doc)


def test_unknown_field_and_name_mismatch_rejected(tmp_path: Path) -> None:
    doc = copy.deepcopy(G7)
    doc["uplink"]["bytes_per_sec"] = 1
    with pytest.raises(ProfileError, match="unknown field uplink.bytes_per_sec"):
        profile_from_dict(doc)
    (tmp_path / "other.toml").write_text((PROFILE_DIR / "dexcom-g7.toml").read_text())
    with pytest.raises(ProfileError, match="must match the file name"):
        load_profile(tmp_path / "other.toml")
    (tmp_path / "broken.toml").write_text("[device\n")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(tmp_path / "broken.toml")
    with pytest.raises(ProfileError, match="no firmware profile named 'nope'"):
        load_profile("nope")


def test_profiles_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["profiles", "list"]) == 0
    out = capsys.readouterr().out
    assert "dexcom-g7" in out and "libre-3" in out and "pi-zero-2w" in out and "pi-4" in out
    assert main(["profiles", "show", "dexcom-g7"]) == 0
    out = capsys.readouterr().out
    assert "nRF52832" in out and "288 readings" in out and "warm-up" in out
    bad = (PROFILE_DIR / "dexcom-g7.toml").read_text().replace("batch_size = 12", "")
    (tmp_path / "dexcom-g7.toml").write_text(bad)
    assert main(["profiles", "show", str(tmp_path / "dexcom-g7.toml")]) == 2
    assert "uplink.batch_size is missing" in capsys.readouterr().err


def test_profiles_are_package_data() -> None:
    """Installed from a wheel, the profiles come with the package (firmware_profiles is importable)."""
    from importlib.resources import files

    shipped = sorted(p.name for p in files("firmware_profiles").iterdir() if p.name.endswith(".toml"))
    assert shipped == ["dexcom-g7.toml", "libre-3.toml", "pi-4.toml", "pi-zero-2w.toml"]
