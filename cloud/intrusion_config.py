"""Intrusion response's settings: rule thresholds, windows and lock times (`IntrusionConfig`), from
cloud/intrusion.default.toml, a `wearfed cloud serve --intrusion` file, or flags (`load_config`). The rules
themselves: `cloud.intrusion`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from cloud.dp_plausibility import DPPolicy

DEFAULT_FILE = Path(__file__).with_name("intrusion.default.toml")
KEY_KINDS = {"auth_failures": "address", "bad_signatures": "address", "replays": "address", "denials": "user",
             "implausible_reports": "participant", "copied_ciphertexts": "participant"}
RULES = tuple(KEY_KINDS)
FLAGS = frozenset({"witness_hold"})  # settings that are true or false, not numbers


@dataclass(frozen=True)
class IntrusionConfig:
    auth_failures: int = 10  # within window_s, per client address
    bad_signatures: int = 3
    replays: int = 3
    denials: int = 5  # per staff user
    implausible_reports: int = 1  # per participant (its own signature)
    copied_ciphertexts: int = 1
    window_s: float = 60.0
    address_lock_s: float = 900.0
    weight_outlier_factor: float = 20.0  # alert only; 0 turns it off
    # alert when a participant submits while its last witnessed checkpoint (cloud.witnesses) is older than this many
    # seconds, or this many checkpoints behind the log; 0 turns each off
    witness_max_age_s: float = 900.0
    witness_max_behind: int = 5000
    witness_hold: bool = False  # also refuse (409) its updates until it acknowledges a checkpoint again
    dp: DPPolicy = field(default_factory=DPPolicy)

    def __post_init__(self) -> None:
        for rule in RULES:
            if getattr(self, rule) < 1:
                raise ValueError(f"{rule} must be >= 1, got {getattr(self, rule)}")
        if self.window_s <= 0 or self.address_lock_s <= 0 or self.weight_outlier_factor < 0:
            raise ValueError("window_s and address_lock_s must be > 0, weight_outlier_factor >= 0")
        if self.witness_max_age_s < 0 or self.witness_max_behind < 0:
            raise ValueError("witness_max_age_s and witness_max_behind must be >= 0 (0: off)")

    @property
    def witness_rule(self) -> bool:
        return bool(self.witness_max_age_s or self.witness_max_behind)

    def threshold(self, rule: str) -> int:
        return int(getattr(self, rule))

    def as_dict(self) -> dict:
        return asdict(self)


def load_config(path: Path | None = None, **overrides: object) -> IntrusionConfig:
    """Thresholds from a TOML file (None: cloud/intrusion.default.toml) with ``[detection]`` and ``[dp_reports]``
    sections, then `overrides` (flags; None values ignored). ConfigError names the file and the field."""
    import tomllib

    from federation.errors import ConfigError

    path = DEFAULT_FILE if path is None else Path(path)
    where = f"intrusion file {path}"
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from exc
    unknown = set(doc) - {"detection", "dp_reports"}
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {sorted(unknown)}; sections: detection, dp_reports")
    det, dp = dict(doc.get("detection", {})), dict(doc.get("dp_reports", {}))
    det.update({k: v for k, v in overrides.items() if v is not None and not k.startswith("dp_")})
    dp.update({k.removeprefix("dp_"): v for k, v in overrides.items() if v is not None and k.startswith("dp_")})
    for section, values, allowed in (("detection", det, set(IntrusionConfig.__dataclass_fields__) - {"dp"}),
                                     ("dp_reports", dp, set(DPPolicy.__dataclass_fields__))):
        for name, value in values.items():
            if name not in allowed:
                raise ConfigError(f"{where}: [{section}] {name} is not a setting; settings: {sorted(allowed)}")
            if name in FLAGS:
                if not isinstance(value, bool):
                    raise ConfigError(f"{where}: [{section}] {name} must be true or false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where}: [{section}] {name} must be a number, got {value!r}")
    try:
        return IntrusionConfig(**det, dp=DPPolicy(**dp))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
