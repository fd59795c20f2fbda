"""Virtual-subject parameter tables: the 30 UVA/Padova 2008 subjects shipped with simglucose, as arrays.

The numbers come from ``data/vpatient_params.csv`` and ``data/quest.csv`` (copies of simglucose 0.2.11's
``simglucose/params/`` tables, MIT; see ``data/README.md``). A :class:`Cohort` holds one float64 array per
parameter, one entry per subject, so the model evaluates the whole cohort with array arithmetic.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from federation.errors import ConfigError

GROUPS: tuple[str, ...] = ("child", "adolescent", "adult")
N_STATES = 13
# Parameters read by the ODE, the basal-bolus controller and the resampler (simglucose column names).
MODEL_PARAMS: tuple[str, ...] = (
    "BW", "EGPb", "Gb", "Ib", "kabs", "kmax", "kmin", "b", "d", "Vg", "Vi", "Ipb", "Vmx", "Km0", "k2", "k1",
    "p2u", "m1", "m5", "CL", "HEb", "m2", "m4", "m30", "Ilb", "ki", "kp2", "kp3", "f", "Gpb", "ke1", "ke2",
    "Fsnc", "Gtb", "Vm0", "Rdb", "PCRb", "kd", "ksc", "ka1", "ka2", "u2ss", "isc1ss", "isc2ss", "kp1",
)
QUEST_PARAMS: tuple[str, ...] = ("CR", "CF", "Age", "TDI")


def _read_csv(name: str) -> list[dict[str, str]]:
    text = resources.files(__package__).joinpath("data").joinpath(name).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


def group_of(name: str) -> str:
    """Age group of a subject name such as ``adolescent#004`` or ``child-r0012``."""
    for group in GROUPS:
        if name.startswith(group):
            return group
    raise ConfigError(f"subject name {name!r} does not start with one of {GROUPS}")


@dataclass(frozen=True)
class Cohort:
    """A set of virtual subjects: names, age groups, initial states (n, 13) and parameter arrays (n,)."""

    names: tuple[str, ...]
    groups: tuple[str, ...]
    x0: np.ndarray
    params: dict[str, np.ndarray]
    origin: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        n = len(self.names)
        if self.x0.shape != (n, N_STATES):
            raise ConfigError(f"x0 has shape {self.x0.shape}, expected ({n}, {N_STATES})")
        missing = [k for k in (*MODEL_PARAMS, *QUEST_PARAMS) if k not in self.params]
        if missing:
            raise ConfigError(f"cohort params are missing {missing}")
        for key, value in self.params.items():
            if value.shape != (n,):
                raise ConfigError(f"param {key} has shape {value.shape}, expected ({n},)")
        if not self.origin:
            object.__setattr__(self, "origin", ("simglucose",) * n)

    def __len__(self) -> int:
        return len(self.names)

    def take(self, index: Sequence[int] | np.ndarray) -> Cohort:
        """The subjects at ``index``, in that order."""
        idx = np.asarray(index, dtype=np.int64)
        return Cohort(
            names=tuple(self.names[i] for i in idx),
            groups=tuple(self.groups[i] for i in idx),
            x0=self.x0[idx].copy(),
            params={k: v[idx].copy() for k, v in self.params.items()},
            origin=tuple(self.origin[i] for i in idx),
        )

    def concat(self, other: Cohort) -> Cohort:
        """This cohort followed by ``other``."""
        return Cohort(
            names=self.names + other.names,
            groups=self.groups + other.groups,
            x0=np.concatenate([self.x0, other.x0]),
            params={k: np.concatenate([v, other.params[k]]) for k, v in self.params.items()},
            origin=self.origin + other.origin,
        )

    def subject_table(self) -> list[dict[str, object]]:
        """One JSON-friendly dict per subject: name, group, origin, parameters and initial state."""
        rows: list[dict[str, object]] = []
        for i, name in enumerate(self.names):
            row: dict[str, object] = {"name": name, "group": self.groups[i], "origin": self.origin[i]}
            row.update({k: float(v[i]) for k, v in self.params.items()})
            row["x0"] = [float(v) for v in self.x0[i]]
            rows.append(row)
        return rows


def load_subjects(names: Sequence[str] | None = None) -> Cohort:
    """The published subjects (all 30 in file order: adolescents, adults, children) or those named."""
    rows = _read_csv("vpatient_params.csv")
    quest = {row["Name"]: row for row in _read_csv("quest.csv")}
    by_name = {row["Name"]: row for row in rows}
    chosen = [row["Name"] for row in rows] if names is None else list(names)
    unknown = [n for n in chosen if n not in by_name]
    if unknown:
        raise ConfigError(f"names: unknown subjects {unknown}; known: {sorted(by_name)}")
    x0_cols = [c for c in rows[0] if c.startswith("x0_")]
    x0 = np.array([[float(by_name[n][c]) for c in x0_cols] for n in chosen], dtype=np.float64)
    params = {k: np.array([float(by_name[n][k]) for n in chosen]) for k in MODEL_PARAMS}
    params.update({k: np.array([float(quest[n][k]) for n in chosen]) for k in QUEST_PARAMS})
    return Cohort(names=tuple(chosen), groups=tuple(group_of(n) for n in chosen), x0=x0, params=params)


def interleaved_subjects() -> Cohort:
    """All 30 published subjects ordered child, adolescent, adult, child, ... (#001 of each group first)."""
    names = [f"{g}#{i:03d}" for i in range(1, 11) for g in GROUPS]
    return load_subjects(names)


def read_table(name: str) -> list[dict[str, str]]:
    """Rows of one shipped CSV table (``sensor_params.csv``, ``pump_params.csv``, ...)."""
    return _read_csv(name)
