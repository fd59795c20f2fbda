"""Firmware profiles: one TOML file per device class, validated field by field into a frozen `Profile`.

A profile says what the simulated device may do: how often it samples, how long a sensor session lasts and
how long it warms up, how many readings its flash holds for store-and-forward, how fast its uplink is, how
much energy it has and spends, how many readings go in one publish, whether it can run the forecaster, and
its local-DP mechanism, epsilon per reading and daily cap. Every value is cited in the TOML file itself.

A missing field, a field of the wrong type, an unknown field or an impossible value raises `ProfileError`
naming ``section.field`` and the file. Cross-field checks: the store must fit the flash, a reading must fit
the RAM, the daily cap must admit at least one reading, warm-up must be shorter than the session, a
battery-powered device must have a battery, a device that runs the forecaster must accept a model.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import firmware_profiles
from device.errors import ProfileError
from device.ldp import MECHANISMS
from federation.ldp_range import EPSILON_CEILING, EPSILON_FLOOR, epsilon_ceiling
from federation.telemetry import MAX_DAY_BUDGET, PATIENT_DAY, PRIVACY_UNITS

PROFILE_DIR = Path(firmware_profiles.__file__).resolve().parent  # a package, so wheels ship the profiles
PROFILE_DIR_ENV = "WEARFED_PROFILE_DIR"
DEFAULT_PROFILE = "dexcom-g7"
KINDS = ("sensor", "hub")
DAY_S = 86_400


@dataclass(frozen=True)
class Profile:
    """A validated firmware profile (units in the field names)."""

    name: str
    description: str
    kind: str
    mcu: str
    ram_kb: float
    flash_kb: float
    # sensor
    sample_interval_s: int
    warmup_s: int
    session_s: int
    # storage (store-and-forward)
    store_capacity_readings: int
    bytes_per_stored_reading: int
    store_flash_kb: float
    # uplink
    link: str
    uplink_bytes_per_s: float
    batch_size: int
    # energy
    mains_powered: bool
    battery_mah: float
    battery_v: float
    battery_replaced_each_session: bool
    energy_per_reading_uj: float
    energy_per_byte_uj: float
    idle_power_uw: float
    # on-device model
    runs_forecaster: bool
    max_model_bytes: int
    # local DP
    ldp_mechanism: str
    privacy_unit: str  # "patient-day" (the default guarantee) or "reading" (event-level, a labelled option)
    epsilon_per_patient_day: float  # the budget of a patient-day: everything the device releases in a UTC day
    epsilon_per_reading: float  # event-level option only: each release's epsilon
    daily_cap: float  # event-level option only: the odometer's cap per day

    @property
    def battery_uj(self) -> float:
        """Usable battery energy in microjoules (mAh x V x 3.6 J)."""
        return self.battery_mah * self.battery_v * 3.6e6

    @property
    def readings_per_day(self) -> int:
        return DAY_S // self.sample_interval_s

    def explain(self) -> list[tuple[str, str]]:
        """Human-readable (what, value) rows for `wearfed profiles show`."""
        days = self.session_s / DAY_S
        rows = [
            ("device", f"{self.name} ({self.kind}): {self.description}"),
            ("hardware", f"{self.mcu}, {_num(self.ram_kb)} KB RAM, {_num(self.flash_kb)} KB flash"),
            ("sampling", f"one reading every {self.sample_interval_s} s ({self.readings_per_day} a day)"),
            ("sensor session", f"{days:g} days, first {self.warmup_s / 60:g} min of each is warm-up (no readings)"),
            ("store-and-forward", f"{self.store_capacity_readings} readings x {self.bytes_per_stored_reading} B "
                                  f"in {self.store_flash_kb:g} KB of flash "
                                  f"({self.store_capacity_readings * self.sample_interval_s / 3600:g} h); "
                                  "full -> oldest dropped and counted"),
            ("uplink", f"{self.link}, throttled to {_num(self.uplink_bytes_per_s)} B/s of simulated time, "
                       f"up to {self.batch_size} readings per publish"),
        ]
        if self.mains_powered:
            rows.append(("power", "mains (no battery model)"))
        else:
            rows.append(("power", f"{self.battery_mah:g} mAh at {self.battery_v:g} V "
                                  f"({self.battery_uj / 1e6:g} J); {self.energy_per_reading_uj:g} uJ/reading, "
                                  f"{self.energy_per_byte_uj:g} uJ/byte sent, {self.idle_power_uw:g} uW idle; "
                                  + ("new battery each session" if self.battery_replaced_each_session
                                     else "battery kept across sessions")))
        rows.append(("forecaster", f"runs on device, model up to {self.max_model_bytes} B" if self.runs_forecaster
                     else "not on device (too little RAM)"))
        if self.privacy_unit == PATIENT_DAY:
            rows.append(("local DP", f"{self.ldp_mechanism}, epsilon {self.epsilon_per_patient_day:g} per patient-day "
                                     "(everything released in a UTC day: glucose, insulin, carbs; delta 0)"))
        else:
            rows.append(("local DP", f"EVENT-LEVEL: {self.ldp_mechanism}, epsilon {self.epsilon_per_reading:g} per "
                                     f"reading (unit: reading, delta 0), daily cap {self.daily_cap:g} = "
                                     f"{int(self.daily_cap / self.epsilon_per_reading + 1e-9)} readings a day"))
        return rows


def _num(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,g}"


# (section, key) -> (Profile attribute, type, check, what the check demands)
_Check = tuple[str, type, Any, str]
_POS = (lambda v: v > 0, "> 0")
_NONNEG = (lambda v: v >= 0, ">= 0")
SCHEMA: dict[tuple[str, str], _Check] = {
    ("device", "name"): ("name", str, lambda v: v != "" and "/" not in v, "a non-empty name without '/'"),
    ("device", "description"): ("description", str, lambda v: True, "text"),
    ("device", "kind"): ("kind", str, lambda v: v in KINDS, f"one of {KINDS}"),
    ("device", "mcu"): ("mcu", str, lambda v: v != "", "non-empty"),
    ("device", "ram_kb"): ("ram_kb", float, *_POS),
    ("device", "flash_kb"): ("flash_kb", float, *_POS),
    ("sensor", "sample_interval_s"): ("sample_interval_s", int, lambda v: 1 <= v <= DAY_S, "in [1, 86400]"),
    ("sensor", "warmup_s"): ("warmup_s", int, *_NONNEG),
    ("sensor", "session_s"): ("session_s", int, *_POS),
    ("storage", "capacity_readings"): ("store_capacity_readings", int, *_POS),
    ("storage", "bytes_per_reading"): ("bytes_per_stored_reading", int, *_POS),
    ("storage", "flash_kb"): ("store_flash_kb", float, *_POS),
    ("uplink", "link"): ("link", str, lambda v: v != "", "non-empty"),
    ("uplink", "bytes_per_s"): ("uplink_bytes_per_s", float, *_POS),
    ("uplink", "batch_size"): ("batch_size", int, lambda v: 1 <= v <= 512, "in [1, 512] (telemetry MAX_BATCH)"),
    ("energy", "mains_powered"): ("mains_powered", bool, lambda v: True, "true or false"),
    ("energy", "battery_mah"): ("battery_mah", float, *_NONNEG),
    ("energy", "battery_v"): ("battery_v", float, *_NONNEG),
    ("energy", "battery_replaced_each_session"): ("battery_replaced_each_session", bool, lambda v: True,
                                                  "true or false"),
    ("energy", "per_reading_uj"): ("energy_per_reading_uj", float, *_NONNEG),
    ("energy", "per_byte_uj"): ("energy_per_byte_uj", float, *_NONNEG),
    ("energy", "idle_power_uw"): ("idle_power_uw", float, *_NONNEG),
    ("model", "runs_forecaster"): ("runs_forecaster", bool, lambda v: True, "true or false"),
    ("model", "max_model_bytes"): ("max_model_bytes", int, *_NONNEG),
    ("ldp", "mechanism"): ("ldp_mechanism", str, lambda v: v in MECHANISMS, f"one of {MECHANISMS}"),
    ("ldp", "unit"): ("privacy_unit", str, lambda v: v in PRIVACY_UNITS, f"one of {PRIVACY_UNITS}"),
    ("ldp", "epsilon_per_patient_day"): ("epsilon_per_patient_day", float, lambda v: 0 < v <= MAX_DAY_BUDGET,
                                         f"in (0, {MAX_DAY_BUDGET:g}]"),
    ("ldp", "epsilon_per_reading"): ("epsilon_per_reading", float, lambda v: EPSILON_FLOOR <= v <= EPSILON_CEILING,
                                     f"in [{EPSILON_FLOOR:g}, {EPSILON_CEILING:g}] (federation.ldp_range policy)"),
    ("ldp", "daily_cap"): ("daily_cap", float, *_POS),
}
assert {a for a, *_ in SCHEMA.values()} == {f.name for f in fields(Profile)}


def _typed(where: str, value: object, kind: type) -> object:
    if kind is bool:
        if not isinstance(value, bool):
            raise ProfileError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProfileError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ProfileError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ProfileError(f"{where}: expected a string, got {value!r}")
    return value


def profile_from_dict(doc: dict, *, source: str = "<profile>") -> Profile:
    """Validate a parsed profile document; raises ProfileError naming the first bad field."""
    if not isinstance(doc, dict):
        raise ProfileError(f"{source}: a profile is a TOML table")
    sections = {s for s, _ in SCHEMA}
    for section, table in doc.items():
        if section not in sections:
            raise ProfileError(f"{source}: unknown section [{section}]")
        if not isinstance(table, dict):
            raise ProfileError(f"{source}: [{section}] must be a table")
        for key in table:
            if (section, key) not in SCHEMA:
                raise ProfileError(f"{source}: unknown field {section}.{key}")
    values: dict[str, Any] = {}
    for (section, key), (attr, kind, check, demand) in SCHEMA.items():
        where = f"{source}: {section}.{key}"
        if key not in doc.get(section, {}):
            raise ProfileError(f"{where} is missing")
        value = _typed(where, doc[section][key], kind)
        if not check(value):
            raise ProfileError(f"{where} = {value!r} is impossible: must be {demand}")
        values[attr] = value
    p = Profile(**values)
    _cross_checks(p, source)
    return p


def _bad(source: str, field: str, why: str) -> ProfileError:
    return ProfileError(f"{source}: {field} is impossible: {why}")


def _cross_checks(p: Profile, source: str) -> None:
    if p.warmup_s >= p.session_s:
        raise _bad(source, "sensor.warmup_s", f"warm-up {p.warmup_s} s is not shorter than the session "
                                              f"{p.session_s} s")
    if p.sample_interval_s > p.session_s:
        raise _bad(source, "sensor.sample_interval_s", "longer than the sensor session")
    if p.store_capacity_readings * p.bytes_per_stored_reading > p.store_flash_kb * 1024:
        raise _bad(source, "storage.capacity_readings",
                   f"{p.store_capacity_readings} x {p.bytes_per_stored_reading} B does not fit "
                   f"storage.flash_kb = {p.store_flash_kb:g}")
    if p.store_flash_kb > p.flash_kb:
        raise _bad(source, "storage.flash_kb", f"{p.store_flash_kb:g} KB exceeds device.flash_kb {p.flash_kb:g}")
    if p.mains_powered and p.battery_mah:
        raise _bad(source, "energy.battery_mah", "a mains-powered device declares battery_mah = 0")
    if not p.mains_powered:
        if p.battery_mah <= 0:
            raise _bad(source, "energy.battery_mah", "a battery-powered device needs a battery > 0 mAh")
        if p.battery_v <= 0:
            raise _bad(source, "energy.battery_v", "a battery-powered device needs a voltage > 0")
        if p.energy_per_reading_uj <= 0:
            raise _bad(source, "energy.per_reading_uj", "a battery-powered device spends energy on each reading")
        if p.energy_per_reading_uj > p.battery_uj:
            raise _bad(source, "energy.per_reading_uj", "one reading would drain the whole battery")
    if p.runs_forecaster and p.max_model_bytes <= 0:
        raise _bad(source, "model.max_model_bytes", "a device that runs the forecaster must accept a model")
    if not p.runs_forecaster and p.max_model_bytes:
        raise _bad(source, "model.max_model_bytes", "a device that does not run the forecaster accepts no model")
    if p.max_model_bytes > p.flash_kb * 1024:
        raise _bad(source, "model.max_model_bytes", "larger than the device's flash")
    if p.epsilon_per_reading > epsilon_ceiling(p.ldp_mechanism):
        raise _bad(source, "ldp.epsilon_per_reading", f"{p.epsilon_per_reading:g} exceeds "
                                                      f"{epsilon_ceiling(p.ldp_mechanism):g} for {p.ldp_mechanism}")
    if p.daily_cap < p.epsilon_per_reading:
        raise _bad(source, "ldp.daily_cap", f"{p.daily_cap:g} is below epsilon_per_reading "
                                            f"{p.epsilon_per_reading:g}: no reading would ever be sent")


# Command-line flags that override a profile field: validated by the same SCHEMA entry and cross-checks, so an
# override can never do what the profile file could not (e.g. --batch-size 600 past the wire's MAX_BATCH).
OVERRIDES: dict[str, tuple[str, tuple[str, str]]] = {
    "batch_size": ("--batch-size", ("uplink", "batch_size")),
    "ldp_mechanism": ("--ldp-mechanism", ("ldp", "mechanism")),
    "epsilon_per_reading": ("--ldp-epsilon", ("ldp", "epsilon_per_reading")),
    "daily_cap": ("--daily-cap", ("ldp", "daily_cap")),
    "privacy_unit": ("--privacy-unit", ("ldp", "unit")),
    "epsilon_per_patient_day": ("--daily-budget", ("ldp", "epsilon_per_patient_day")),
}
NO_LDP = "none"  # --ldp-mechanism none: raw readings, studies only (not a profile value)


def apply_overrides(profile: Profile, **overrides: object) -> Profile:
    """`profile` with the given fields replaced (None: keep the profile's); ProfileError naming the flag otherwise."""
    values: dict[str, Any] = {}
    for attr, value in overrides.items():
        if value is None:
            continue
        if attr not in OVERRIDES:
            raise ProfileError(f"no command-line override for profile field {attr!r}")
        flag, key = OVERRIDES[attr]
        _attr, kind, check, demand = SCHEMA[key]
        if attr == "ldp_mechanism" and value == NO_LDP:
            values[attr] = value
            continue
        typed = _typed(f"command line: {flag}", value, kind)
        if not check(typed):
            raise ProfileError(f"command line: {flag} {value!r} is impossible: must be {demand}")
        values[attr] = typed
    out = replace(profile, **values)
    event_level = {"epsilon_per_reading", "daily_cap"} & set(values)
    if event_level and out.privacy_unit != "reading":
        flags = " / ".join(OVERRIDES[a][0] for a in sorted(event_level))
        raise ProfileError(f"command line: {flags} set the event-level option: add --privacy-unit reading (the "
                           "guarantee is then per reading, not per patient-day)")
    if out.ldp_mechanism != NO_LDP and out.epsilon_per_reading > epsilon_ceiling(out.ldp_mechanism):
        raise ProfileError(f"command line: --ldp-epsilon {out.epsilon_per_reading:g} exceeds "
                           f"{epsilon_ceiling(out.ldp_mechanism):g} for {out.ldp_mechanism}")
    if out.ldp_mechanism != NO_LDP and out.daily_cap < out.epsilon_per_reading:
        named = [OVERRIDES[a][0] for a in ("daily_cap", "epsilon_per_reading") if a in values] or ["the profile"]
        raise ProfileError(f"command line: {' / '.join(named)}: the daily cap {out.daily_cap:g} is below the epsilon "
                           f"per reading {out.epsilon_per_reading:g}: no reading would ever be sent")
    return out


def profile_dir() -> Path:
    return Path(os.environ.get(PROFILE_DIR_ENV) or PROFILE_DIR)


def load_profile_file(path: Path) -> Profile:
    try:
        doc = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from exc
    p = profile_from_dict(doc, source=str(path))
    if p.name != Path(path).stem:
        raise ProfileError(f"{path}: device.name = {p.name!r} must match the file name {Path(path).stem!r}")
    return p


def list_profiles(directory: Path | None = None) -> list[Profile]:
    """Every profile in the directory, validated (one bad file fails the listing, naming it)."""
    d = directory or profile_dir()
    return [load_profile_file(f) for f in sorted(d.glob("*.toml"))]


def load_profile(name_or_path: str | Path, *, directory: Path | None = None) -> Profile:
    """A profile by name (``dexcom-g7``) from the profile directory, or by path to a TOML file."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.exists():
        return load_profile_file(candidate)
    d = directory or profile_dir()
    name_or_path = firmware_profiles.canonical_name(str(name_or_path))  # libre3 is libre-3, as sensors say
    path = d / f"{name_or_path}.toml"
    if not path.exists():
        known = ", ".join(f.stem for f in sorted(d.glob("*.toml"))) or "none"
        raise ProfileError(f"no firmware profile named {str(name_or_path)!r} in {d} (known: {known})")
    return load_profile_file(path)
