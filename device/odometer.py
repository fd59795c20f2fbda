"""Per-device privacy odometer: pure-epsilon LDP spend per UTC day and lifetime, persisted atomically.

Unit of privacy: one reading (event-level LDP). Each privatised reading costs ``epsilon_per_reading``;
readings compose sequentially, so a day's spend is the sum over that day's readings (delta = 0, pure LDP).
The day is the UTC calendar day of the reading's *simulated* timestamp (see ``utc_day``). A device stops
sending when ``spend`` raises ``BudgetExhausted``.

State lives in one JSON file, rewritten on every spend by write-to-temp + fsync + ``os.replace`` (+ fsync of
the directory), so a kill at any instant leaves either the old or the new state, never a torn file. A file
that exists but cannot be read as a valid state raises ``OdometerStateError``: it is never silently reset,
because resetting would forget spent budget. One odometer object per state file (single writer).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import tempfile
import threading
from pathlib import Path

from device.ldp import MECHANISMS

STATE_FORMAT = "wearfed.privacy_odometer"
STATE_VERSION = 1
UNIT = "reading"
ACCOUNTANT = "pure-epsilon sequential composition (event-level LDP)"
# Relative float slack when comparing a spend to the cap: 288 readings at 0.1 must fit a cap of 28.8 even
# though 288 * 0.1 > 28.8 in binary floating point. Overspend is bounded by cap * 1e-9.
_CAP_RTOL = 1e-9


class BudgetExhausted(Exception):
    """Spending would pass the daily cap; carries ``day``, ``spent`` (so far), ``cap`` and ``requested``."""

    def __init__(self, day: str, spent: float, cap: float, requested: float = 0.0) -> None:
        self.day, self.spent, self.cap, self.requested = day, spent, cap, requested
        super().__init__(
            f"privacy budget for UTC day {day} exhausted: spent epsilon={spent:g} of cap {cap:g}, "
            f"requested {requested:g} more (unit: {UNIT}, delta=0, accountant: {ACCOUNTANT})"
        )


class OdometerStateError(Exception):
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


def _fsync_dir(directory: Path) -> None:
    # Makes the rename durable; not possible on every platform (e.g. Windows), where it is skipped.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


class PrivacyOdometer:
    """Tracks epsilon spent per UTC day and over the device's lifetime; refuses spends past the daily cap."""

    def __init__(self, path: Path, *, daily_cap: float, mechanism: str, epsilon_per_reading: float) -> None:
        self._path = Path(path)
        self._cap = _positive("daily_cap", daily_cap)
        self._eps = _positive("epsilon_per_reading", epsilon_per_reading)
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
        self._remove_stale_temps()

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
        if doc.get("format") != STATE_FORMAT or doc.get("version") != STATE_VERSION:
            raise self._corrupt(f"format/version {doc.get('format')!r}/{doc.get('version')!r} not recognised")
        if doc.get("unit") != UNIT or doc.get("delta") != 0.0:
            raise self._corrupt("unit or delta differ from event-level pure LDP")
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
            "unit": UNIT,
            "accountant": ACCOUNTANT,
            "delta": 0.0,
            "mechanism": self._mechanism,
            "epsilon_per_reading": self._eps,
            "daily_cap": self._cap,
            "days": {d: {"epsilon": e, "readings": n} for d, (e, n) in sorted(days.items())},
            "lifetime": {"epsilon": lifetime[0], "readings": lifetime[1]},
        }

    def _remove_stale_temps(self) -> None:
        # Left by a kill between mkstemp and os.replace; never part of the state (single writer assumed).
        for stale in self._path.parent.glob(f".{self._path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()

    def _persist(self, doc: dict) -> None:
        directory = self._path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self._path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(directory)

    # -- public API -------------------------------------------------------------------------------------

    def _fits(self, spent: float, n: int) -> bool:
        return spent + n * self._eps <= self._cap * (1 + _CAP_RTOL)

    def can_spend(self, day: str, n: int = 1) -> bool:
        """Whether ``n`` more readings on ``day`` stay within the daily cap (changes nothing)."""
        return self._fits(self.spent_today(day), _check_n(n))

    def spend(self, day: str, n: int = 1) -> None:
        """Charge ``n`` readings to ``day``; raises BudgetExhausted (charging nothing) past the cap.

        Returns only after the new state is durably on disk; if persisting fails, the error propagates and
        neither the file nor this object changes.
        """
        _check_day(day)
        _check_n(n)
        with self._lock:
            spent, count = self._days.get(day, (0.0, 0))
            if not self._fits(spent, n):
                raise BudgetExhausted(day, spent, self._cap, n * self._eps)
            days = dict(self._days)
            days[day] = (spent + n * self._eps, count + n)
            lifetime = (self._lifetime[0] + n * self._eps, self._lifetime[1] + n)
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
            "unit": UNIT,
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
