"""Per-device privacy odometer: pure-epsilon LDP spend per UTC day and lifetime, persisted atomically.

Unit of privacy: the patient-day (default): every release of the day, of every stream (glucose, insulin,
carbs), is charged its epsilon, and the day's sum may not pass the cap (the budget per patient-day); releases
compose sequentially (delta = 0, pure LDP). The event-level option (unit ``reading``) charges the same way but
guarantees only each release's own epsilon; the cap then bounds a day's releases. The day is the UTC calendar
day of the release's *simulated* timestamp (see ``utc_day``). A device stops releasing when a charge raises
``BudgetExhausted``.

State lives in one JSON file, rewritten on every spend by write-to-temp + fsync + ``os.replace`` (+ fsync of
the directory), so a kill at any instant leaves either the old or the new state, never a torn file. A file
that exists but cannot be read as a valid state raises ``OdometerStateError``: it is never silently reset,
because resetting would forget spent budget. One odometer object per state file (single writer).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import threading
from pathlib import Path

from device.errors import DeviceError
from device.ldp import MECHANISMS
from federation.runtime import atomic_write_json, remove_stale_temps

STATE_FORMAT = "wearfed.privacy_odometer"
STATE_VERSION = 2  # version 1 files (event-level only, unit "reading") are still read
UNIT = "reading"  # the event-level option
PATIENT_DAY = "patient-day"
UNITS = (PATIENT_DAY, UNIT)
ACCOUNTANT = "pure-epsilon sequential composition"
# Relative float slack when comparing a spend to the cap: 288 readings at 0.1 must fit a cap of 28.8 even
# though 288 * 0.1 > 28.8 in binary floating point. Overspend is bounded by cap * 1e-9.
_CAP_RTOL = 1e-9


class BudgetExhausted(DeviceError):
    """Spending would pass the daily cap; carries ``day``, ``spent`` (so far), ``cap`` and ``requested``."""

    def __init__(self, day: str, spent: float, cap: float, requested: float = 0.0, unit: str = UNIT) -> None:
        self.day, self.spent, self.cap, self.requested, self.unit = day, spent, cap, requested, unit
        super().__init__(
            f"privacy budget for UTC day {day} exhausted: spent epsilon={spent:g} of cap {cap:g}, "
            f"requested {requested:g} more (unit: {unit}, delta=0, accountant: {ACCOUNTANT})"
        )


class OdometerStateError(DeviceError):
    """The state file exists but is not a valid odometer state; it is left untouched for inspection."""


def utc_day(timestamp: float | dt.datetime) -> str:
    """The UTC day (``YYYY-MM-DD``) of simulated unix seconds or of a timezone-aware datetime."""
    if isinstance(timestamp, dt.datetime):
        if timestamp.tzinfo is None:
            raise ValueError("timestamp: naive datetime is ambiguous, give a timezone-aware one")
        return timestamp.astimezone(dt.UTC).date().isoformat()
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)) or not math.isfinite(timestamp):
        raise ValueError(f"timestamp must be finite unix seconds, got {timestamp!r}")
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).date().isoformat()


def _check_day(day: object) -> str:
    try:
        if isinstance(day, str) and dt.date.fromisoformat(day).isoformat() == day:
            return day
    except ValueError:
        pass
    raise ValueError(f"day must be an ISO date 'YYYY-MM-DD', got {day!r}")


def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    return n


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    out = float(value)
    if not (math.isfinite(out) and out > 0):
        raise ValueError(f"{name} must be finite and > 0, got {out!r}")
    return out


class PrivacyOdometer:
    """Tracks epsilon spent per UTC day and over the device's lifetime; refuses spends past the daily cap."""

    def __init__(self, path: Path, *, daily_cap: float, mechanism: str, epsilon_per_reading: float,
                 unit: str = UNIT) -> None:
        """`epsilon_per_reading`: what `spend(day, n)` charges per release (the smallest release, for checks)."""
        self._path = Path(path)
        self._cap = _positive("daily_cap", daily_cap)
        self._eps = _positive("epsilon_per_reading", epsilon_per_reading)
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
        self.unit = unit
        if mechanism not in MECHANISMS:
            raise ValueError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")
        if self._eps > self._cap * (1 + _CAP_RTOL):
            raise ValueError(
                f"daily_cap {self._cap:g} is below epsilon_per_reading {self._eps:g}: no reading would fit"
            )
        self._mechanism = mechanism
        self._lock = threading.Lock()
        # day -> (epsilon spent, readings)
        self._days: dict[str, tuple[float, int]] = {}
        self._lifetime: tuple[float, int] = (0.0, 0)
        if self._path.exists():
            self._load()
        remove_stale_temps(self._path)  # left by a kill between the temporary write and the rename

    # -- persistence ------------------------------------------------------------------------------------

    def _corrupt(self, why: str) -> OdometerStateError:
        return OdometerStateError(
            f"privacy odometer state {self._path} is corrupt ({why}); refusing to reset it, since that would "
            "forget spent budget: restore it from a backup or move it aside deliberately"
        )

    def _load(self) -> None:
        try:
            doc = json.loads(self._path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._corrupt(f"unreadable: {exc}") from exc
        if not isinstance(doc, dict):
            raise self._corrupt("not a JSON object")
        if doc.get("format") != STATE_FORMAT or doc.get("version") not in (1, STATE_VERSION):
            raise self._corrupt(f"format/version {doc.get('format')!r}/{doc.get('version')!r} not recognised")
        if doc.get("unit") not in UNITS or doc.get("delta") != 0.0:
            raise self._corrupt(f"unit {doc.get('unit')!r} or delta {doc.get('delta')!r} not a pure-LDP unit")
        days = doc.get("days")
        if not isinstance(days, dict):
            raise self._corrupt("'days' missing")
        parsed: dict[str, tuple[float, int]] = {}
        for day, entry in days.items():
            try:
                _check_day(day)
            except ValueError as exc:
                raise self._corrupt(str(exc)) from None
            parsed[day] = self._parse_total(entry, f"day {day}")
        lifetime = self._parse_total(doc.get("lifetime"), "lifetime")
        sum_eps = math.fsum(e for e, _ in parsed.values())
        sum_n = sum(n for _, n in parsed.values())
        if sum_n != lifetime[1] or not math.isclose(sum_eps, lifetime[0], rel_tol=1e-9, abs_tol=1e-12):
            raise self._corrupt("lifetime total disagrees with the sum of daily totals")
        self._days, self._lifetime = parsed, lifetime

    def _parse_total(self, entry: object, what: str) -> tuple[float, int]:
        if not isinstance(entry, dict):
            raise self._corrupt(f"{what}: not an object")
        eps, n = entry.get("epsilon"), entry.get("readings")
        ok_eps = isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps)
        ok_eps = ok_eps and eps >= 0
        ok_n = isinstance(n, int) and not isinstance(n, bool) and n >= 0
        if not (ok_eps and ok_n):
            raise self._corrupt(f"{what}: bad epsilon/readings {eps!r}/{n!r}")
        return float(eps), n

    def _document(self, days: dict[str, tuple[float, int]], lifetime: tuple[float, int]) -> dict:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "unit": self.unit,
            "accountant": ACCOUNTANT,
            "delta": 0.0,
            "mechanism": self._mechanism,
            "epsilon_per_reading": self._eps,
            "daily_cap": self._cap,
            "days": {d: {"epsilon": e, "readings": n} for d, (e, n) in sorted(days.items())},
            "lifetime": {"epsilon": lifetime[0], "readings": lifetime[1]},
        }

    def _persist(self, doc: dict) -> None:
        atomic_write_json(self._path, doc, indent=1)

    # -- public API -------------------------------------------------------------------------------------

    def _fits(self, spent: float, n: int) -> bool:
        return spent + n * self._eps <= self._cap * (1 + _CAP_RTOL)

    def can_spend(self, day: str, n: int = 1) -> bool:
        """Whether ``n`` more readings on ``day`` stay within the daily cap (changes nothing)."""
        return self._fits(self.spent_today(day), _check_n(n))

    def spend(self, day: str, n: int = 1) -> None:
        """Charge ``n`` releases of ``epsilon_per_reading`` each to ``day`` (see `charge`)."""
        self.charge(day, epsilon=_check_n(n) * self._eps, releases=n)

    def can_charge(self, day: str, epsilon: float) -> bool:
        """Whether `epsilon` more on ``day`` stays within the daily cap (changes nothing)."""
        return self.spent_today(day) + _positive("epsilon", epsilon) <= self._cap * (1 + _CAP_RTOL)

    def charge(self, day: str, *, epsilon: float, releases: int = 1) -> None:
        """Charge `epsilon` (for `releases` releases) to ``day``; raises BudgetExhausted (charging nothing) past
        the cap. Returns only after the new state is durably on disk; if persisting fails, the error propagates
        and neither the file nor this object changes.
        """
        _check_day(day)
        _check_n(releases)
        amount = _positive("epsilon", epsilon)
        with self._lock:
            spent, count = self._days.get(day, (0.0, 0))
            if spent + amount > self._cap * (1 + _CAP_RTOL):
                raise BudgetExhausted(day, spent, self._cap, amount, self.unit)
            days = dict(self._days)
            days[day] = (spent + amount, count + releases)
            lifetime = (self._lifetime[0] + amount, self._lifetime[1] + releases)
            self._persist(self._document(days, lifetime))
            self._days, self._lifetime = days, lifetime

    def spent_today(self, day: str) -> float:
        """Epsilon spent on ``day`` (UTC, ``YYYY-MM-DD``); 0.0 for a day with no readings."""
        return self._days.get(_check_day(day), (0.0, 0))[0]

    @property
    def lifetime(self) -> float:
        """Epsilon spent over the device's lifetime (sum over all days)."""
        return self._lifetime[0]

    @property
    def path(self) -> Path:
        return self._path

    def report(self) -> dict:
        """What an auditor needs: unit, accountant, mechanism, per-day and lifetime totals, cap, delta."""
        return {
            "unit": self.unit,
            "accountant": ACCOUNTANT,
            "mechanism": self._mechanism,
            "epsilon_per_reading": self._eps,
            "daily_cap": self._cap,
            "delta": 0.0,
            "daily": {d: e for d, (e, _) in sorted(self._days.items())},
            "daily_readings": {d: n for d, (_, n) in sorted(self._days.items())},
            "lifetime": self._lifetime[0],
            "lifetime_readings": self._lifetime[1],
        }
