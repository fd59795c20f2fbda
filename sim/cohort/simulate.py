"""The closed loop for a whole cohort at once: meals, basal-bolus controller, pump, patient ODE, CGM.

Timing follows simglucose's ``T1DSimEnv``/``SimObj`` (``simglucose/simulation/env.py``, ``sim_engine.py``):
the patient advances in 1-min steps with its inputs held; the controller acts once per sensor interval ``S``
on what the last interval showed (carbs announced during it, and the average of the ``S`` per-minute CGM
values, which hold the previous reading for ``S - 1`` minutes and show the new one in the last), and its rate
is delivered for the next ``S`` minutes. Where the sensor gives no reading (warm-up, gap, dropout) the
controller uses the interval's other reading, or makes no correction if it has none. Meals are eaten at
5 g/min from the minute they are announced (``T1DPatient._announce_meal``); ``Dbar`` for gastric emptying is
the stomach content at the start of eating plus the grams eaten since. Every random draw comes from
per-subject streams of ``seed``, so a subject's trace does not depend on the cohort size or on batching."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from federation.errors import ConfigError

from .controller import BasalBolusController, Pump
from .model import PatientModel, initial_state, stable_substeps
from .params import Cohort
from .scenario import MealPlan, random_meals, scenario_description
from .sensors import SensorProfile, build_stream, get_sensor

MODEL_VERSION = "wearfed-cohort/1 (UVA/Padova 2008 academic, simglucose 0.2.11 equations)"
EAT_RATE_G_PER_MIN = 5.0
DEFAULT_START = datetime(2025, 1, 1)
STREAMS = ("meals", "noise", "wear")


@dataclass
class CohortTraces:
    """Per-subject traces on the sensor's grid: arrays (n, T) at ``minutes`` (T,) from ``start``.

    ``bg`` is blood (plasma) glucose ``Gp / Vg`` and ``ig`` interstitial glucose ``Gs / Vg`` (what simglucose
    reports as "BG") at each timestamp, mg/dL; ``cgm`` the
    sensor reading (NaN where none); ``carbs`` grams announced and ``insulin`` units delivered in
    ``[t, t + interval)``. ``minute_bg``/``minute_ig`` (n, minutes + 1) exist when asked for.
    """

    subjects: tuple[str, ...]
    groups: tuple[str, ...]
    start: datetime
    interval_min: int
    minutes: np.ndarray
    bg: np.ndarray
    ig: np.ndarray
    cgm: np.ndarray
    carbs: np.ndarray
    insulin: np.ndarray
    metadata: dict[str, object] = field(default_factory=dict)
    minute_bg: np.ndarray | None = None
    minute_ig: np.ndarray | None = None

    def timestamps(self) -> np.ndarray:
        """Timestamps (T,) as ``datetime64[s]``."""
        return np.datetime64(self.start, "s") + self.minutes.astype("timedelta64[m]")

    def __len__(self) -> int:
        return len(self.subjects)


class Stomach:
    """simglucose's eating bookkeeping (``T1DPatient.step``/``_announce_meal``) for n subjects at once.

    Announced grams join a queue eaten at 5 g/min; when eating starts, ``Dbar`` restarts from the stomach
    content ``Qsto1 + Qsto2`` and then grows by every gram eaten (converted to mg).
    """

    def __init__(self, x0: np.ndarray) -> None:
        n = x0.shape[0]
        self.planned, self.last_eat, self.food = np.zeros(n), np.zeros(n), np.zeros(n)
        self.last_qsto = x0[:, 0] + x0[:, 1]
        self.eating = np.zeros(n, dtype=bool)

    def eat(self, announced: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grams eaten this minute and ``Dbar`` (mg) for the minute's gastric emptying."""
        self.planned = self.planned + announced
        eat = np.where(self.planned > 0, np.minimum(EAT_RATE_G_PER_MIN, self.planned), 0.0)
        self.planned = np.maximum(self.planned - eat, 0.0)
        begins = (eat > 0) & (self.last_eat <= 0)
        if begins.any():
            self.last_qsto = np.where(begins, x[:, 0] + x[:, 1], self.last_qsto)
            self.food = np.where(begins, 0.0, self.food)
            self.eating |= begins
        self.food = self.food + np.where(self.eating, eat, 0.0)
        self.eating &= ~((eat <= 0) & (self.last_eat > 0))
        self.last_eat = eat
        return eat, self.last_qsto + self.food * 1000.0


def subject_streams(seed: int, n: int, offset: int = 0) -> list[list[np.random.Generator]]:
    """Per-stream, per-subject generators: ``[meals, noise, wear]`` each a list of n generators."""
    seqs = [np.random.SeedSequence(seed, spawn_key=(offset + i,)).spawn(len(STREAMS)) for i in range(n)]
    return [[np.random.default_rng(s[j]) for s in seqs] for j in range(len(STREAMS))]


def _check(cohort: Cohort, days: float, seed: int, substeps: int | None) -> None:
    if len(cohort) < 1:
        raise ConfigError("cohort must hold at least one subject")
    if isinstance(days, bool) or not isinstance(days, int | float) or not math.isfinite(days) or days <= 0:
        raise ConfigError(f"days must be a positive number, got {days!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if substeps is not None and substeps < 1:
        raise ConfigError(f"substeps must be >= 1, got {substeps}")


def simulate(
    cohort: Cohort,
    *,
    days: float,
    seed: int,
    sensor: str | SensorProfile = "dexcom-g7",
    noise: bool = True,
    meals: MealPlan | None = None,
    start: datetime = DEFAULT_START,
    target: float = 140.0,
    pump: str = "Insulet",
    substeps: int | None = None,
    record_minutes: bool = False,
    stream_offset: int = 0,
    progress: Callable[[int], None] | None = None,
) -> CohortTraces:
    """Simulate every subject of ``cohort`` for ``days`` under basal-bolus therapy; arrays (n, T).

    ``meals`` defaults to simglucose-style random meals; ``noise=False`` removes sensor noise (wear effects
    stay; use ``SensorProfile.ideal()`` for neither). ``progress`` is called about once per simulated hour
    with the minutes simulated since its previous call.
    """
    _check(cohort, days, seed, substeps)
    substeps = substeps or stable_substeps(cohort.params)
    profile = get_sensor(sensor)
    if not noise:
        profile = profile.noise_free()
    step = profile.interval_min
    steps = int(round(days * 1440)) // step
    if steps < 1:
        raise ConfigError(f"days must cover at least one sensor interval ({step} min), got {days!r}")
    total = steps * step
    n = len(cohort)
    meal_rngs, noise_rngs, wear_rngs = subject_streams(int(seed), n, stream_offset)
    if meals is None:
        meals = random_meals(meal_rngs, total, start.hour * 60 + start.minute)
    elif meals.patient.size and meals.patient.max() >= n:
        raise ConfigError("meals: plan names a subject index beyond the cohort")
    stream = build_stream(profile, steps + 1, noise_rngs, wear_rngs)
    model = PatientModel(cohort.params)
    ctrl = BasalBolusController(cohort.params, target)
    delivery = Pump.named(pump)
    basal = delivery.basal(ctrl.basal)

    x = initial_state(cohort.x0)
    bounds, counts = meals.announced_at(total)
    stomach = Stomach(x)
    shape = (n, steps)
    bg, ig, cgm = np.empty(shape, np.float32), np.empty(shape, np.float32), np.empty(shape, np.float32)
    carbs, insulin = np.empty(shape, np.float32), np.empty(shape, np.float32)
    minute_bg = np.empty((n, total + 1)) if record_minutes else None
    minute_ig = np.empty((n, total + 1)) if record_minutes else None

    def record(col: int) -> None:
        if minute_bg is not None and minute_ig is not None:
            minute_bg[:, col], minute_ig[:, col] = model.plasma_glucose(x), model.sensor_glucose(x)

    record(0)

    reading = stream.read(0, model.sensor_glucose(x))
    last_carbs = np.zeros(n)
    seen = np.full(n, np.nan)
    done = reported = 0
    for k in range(steps):
        bg[:, k], ig[:, k], cgm[:, k] = model.plasma_glucose(x), model.sensor_glucose(x), reading
        rate = basal + delivery.bolus(ctrl.bolus_rate(last_carbs, seen, step))
        announced_sum = np.zeros(n)
        for j in range(step):
            minute = k * step + j
            announced = np.zeros(n)
            if counts[minute]:
                sl = slice(bounds[minute], bounds[minute + 1])
                np.add.at(announced, meals.patient[sl], meals.grams[sl])
                announced_sum += announced
            eat, dbar = stomach.eat(announced, x)
            x = model.advance(x, eat, rate, dbar, 1.0, substeps)
            record(minute + 1)
        carbs[:, k], insulin[:, k] = announced_sum, rate * step
        new = stream.read(k + 1, model.sensor_glucose(x))
        held = ((step - 1) * reading + new) / step
        seen = np.where(np.isnan(new), reading, np.where(np.isnan(reading), new, held))
        last_carbs, reading = announced_sum, new
        done += step
        if progress is not None and (done - reported >= 60 or k == steps - 1):
            progress(done - reported)
            reported = done
    metadata: dict[str, object] = {
        "model_version": MODEL_VERSION,
        "seed": int(seed),
        "days": total / 1440.0,
        "start": start.isoformat(),
        "interval_min": step,
        "sensor": profile.describe(),
        "scenario": scenario_description(meals),
        "controller": ctrl.describe(),
        "pump": delivery.name,
        "integrator": f"classical RK4, {substeps} step(s) per minute, inputs held per minute",
        "stream_offset": stream_offset,
    }
    return CohortTraces(
        subjects=cohort.names, groups=cohort.groups, start=start, interval_min=step,
        minutes=np.arange(steps, dtype=np.int64) * step, bg=bg, ig=ig, cgm=cgm, carbs=carbs, insulin=insulin,
        metadata=metadata, minute_bg=minute_bg, minute_ig=minute_ig,
    )
