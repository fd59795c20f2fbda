"""Device telemetry wire format: versioned CBOR batches of locally-privatised readings, and the MQTT topics.

A batch (schema 2) carries one device's releases of three streams: glucose (mg/dL), insulin (units delivered in
the release's period) and announced carbohydrates (grams in the period), each under its own LDP header, plus the
device's privacy declaration: the unit its epsilon is counted in (``patient-day``: everything the device releases
in a UTC day, the default; ``reading``: event-level, a labelled option) and its budget per day. CBOR map::

    {"v": 2, "dev": <id>, "e": <epoch>, "p": {"u": "patient-day" | "reading", "b": <epsilon per day> | null},
     "ldp": <glucose header>, "s": {"insulin": <header>, "carbs": <header>},   # "s" only for streams present
     "r": [[seq, t, value], [seq, t, value, k], ...]}                        # k: 1 insulin, 2 carbs (0/absent glucose)

with a header ``{"m": mechanism, "eps": epsilon per release, "lo": clip low, "hi": clip high}``.

Topic layout (MQTT), built and parsed only here: ``wearfed/v1/<gateway>/<device>/readings`` for data,
``wearfed/v1/<gateway>/<device>/status`` (retained) for device status, ``wearfed/v1/<gateway>/<device>/consent``
for a signed consent withdrawal (`federation.consent`), and ``wearfed/v1/<gateway>/model``
(retained) for the signed model release a gateway relays to its devices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cbor2

from federation.errors import SchemaError
from federation.ldp_range import EPSILON_FLOOR, epsilon_ceiling, estimate_range

SCHEMA_VERSION = 2
TOPIC_ROOT = "wearfed/v1"
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_BATCH = 512
# Wire bounds, checked before anything is stored (a value SQLite or numpy cannot hold must never reach them).
MAX_SEQ = 2 ** 53 - 1  # sequence numbers: exact in a double and in SQLite's int64; 2**53 readings is forever
MAX_EPOCH = 2 ** 53 - 1  # a device's epoch (boot identity): random in [1, MAX_EPOCH], new with every fresh state
TIME_RANGE = (946_684_800, 4_102_444_800)  # 2000-01-01 .. 2100-01-01 UTC, unix seconds
GLUCOSE, INSULIN, CARBS = "glucose", "insulin", "carbs"
STREAMS = (GLUCOSE, INSULIN, CARBS)  # a row's stream index k is the position here
STREAM_UNITS = {GLUCOSE: "mg/dL", INSULIN: "U", CARBS: "g"}
# A clip range must lie inside these (what a CGM can measure; insulin and carbs per release period) and be wider
# than the minimum: a self-declared range of +-1e308 is refused.
STREAM_CLIP_LIMITS = {GLUCOSE: (0.0, 1000.0), INSULIN: (0.0, 100.0), CARBS: (0.0, 500.0)}
CLIP_LIMITS = STREAM_CLIP_LIMITS[GLUCOSE]
MIN_CLIP_WIDTH = 1.0
PATIENT_DAY, READING = "patient-day", "reading"
PRIVACY_UNITS = (PATIENT_DAY, READING)
MAX_DAY_BUDGET = 64.0  # epsilon per patient-day a gateway accepts at all (the default device budget is 8)


READINGS, STATUS, MODEL, CONSENT = "readings", "status", "model", "consent"
_FORBIDDEN_IN_LEVEL = "/+#\x00"


def _level(name: str, what: str) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= 64 or any(c in name for c in _FORBIDDEN_IN_LEVEL):
        raise SchemaError(f"{what} {name!r} is not a usable topic level (1-64 characters, none of / + # NUL)")
    return name


def readings_topic(gateway: str, device: str) -> str:
    return f"{TOPIC_ROOT}/{_level(gateway, 'gateway id')}/{_level(device, 'device id')}/{READINGS}"


def status_topic(gateway: str, device: str) -> str:
    return f"{TOPIC_ROOT}/{_level(gateway, 'gateway id')}/{_level(device, 'device id')}/{STATUS}"


def consent_topic(gateway: str, device: str) -> str:
    """Where a device publishes its signed consent withdrawal (`federation.consent`)."""
    return f"{TOPIC_ROOT}/{_level(gateway, 'gateway id')}/{_level(device, 'device id')}/{CONSENT}"


def model_topic(gateway: str) -> str:
    return f"{TOPIC_ROOT}/{_level(gateway, 'gateway id')}/{MODEL}"


def device_subscription(gateway: str, kind: str = READINGS) -> str:
    """The filter a gateway subscribes to for every device's `kind` (readings or status) topic."""
    return f"{TOPIC_ROOT}/{_level(gateway, 'gateway id')}/+/{kind}"


def device_topic_tree(gateway: str, device: str) -> str:
    """Every topic one device may write (its ACL rule)."""
    return f"{TOPIC_ROOT}/{_level(gateway, 'gateway id')}/{_level(device, 'device id')}/#"


@dataclass(frozen=True)
class Topic:
    gateway: str
    device: str | None  # None for the gateway's model topic
    kind: str  # READINGS, STATUS or MODEL


def parse_topic(topic: str) -> Topic:
    """The parts of a wearfed topic; SchemaError naming what is wrong with anything else."""
    root = TOPIC_ROOT.split("/")
    parts = topic.split("/") if isinstance(topic, str) else []
    if parts[:len(root)] != root:
        raise SchemaError(f"unexpected topic {topic!r}: not under {TOPIC_ROOT}/")
    rest = parts[len(root):]
    if len(rest) == 2 and rest[1] == MODEL:
        return Topic(_level(rest[0], "gateway id"), None, MODEL)
    if len(rest) == 3 and rest[2] in (READINGS, STATUS, CONSENT):
        return Topic(_level(rest[0], "gateway id"), _level(rest[1], "device id"), rest[2])
    raise SchemaError(f"unexpected topic {topic!r}: expected {TOPIC_ROOT}/<gateway>/<device>/readings|status|consent "
                      f"or {TOPIC_ROOT}/<gateway>/model")


@dataclass(frozen=True)
class LDPHeader:
    """What a receiver needs to debias and account: mechanism, epsilon per reading, clip range (mg/dL)."""

    mechanism: str
    epsilon: float | None  # None only for mechanism "none" (no local DP)
    lo: float
    hi: float


@dataclass(frozen=True)
class Reading:
    seq: int
    t: int  # simulated unix seconds
    value: float  # privatised estimate in the stream's unit (STREAM_UNITS)
    stream: str = GLUCOSE


@dataclass(frozen=True)
class Privacy:
    """The device's declaration: the unit its epsilon is counted in and its budget per UTC day in that unit.

    ``patient-day``: everything the device releases in a day (all streams, status) is covered by `budget`
    (pure epsilon, sequential composition). ``reading``: event-level LDP, each release at its header's epsilon;
    `budget` is then the odometer's daily cap (or None).
    """

    unit: str = READING
    budget: float | None = None


@dataclass(frozen=True)
class ReadingBatch:
    """A device's readings; (device, epoch, seq) identifies each one.

    `epoch` is drawn at random when a device's state (spool) is created, so a device whose state was reset
    (a re-imaged hub) starts a new sequence space instead of re-using sequence numbers the gateway already
    holds: its readings are stored, not dropped as duplicates of the old epoch's.
    """

    device: str
    epoch: int
    ldp: LDPHeader  # the glucose stream's header
    readings: tuple[Reading, ...]
    streams: dict[str, LDPHeader] = field(default_factory=dict)  # headers of the insulin and carbs streams
    privacy: Privacy = field(default_factory=Privacy)

    def header(self, stream: str) -> LDPHeader:
        return self.ldp if stream == GLUCOSE else self.streams[stream]


def _header_doc(h: LDPHeader) -> dict:
    return {"m": h.mechanism, "eps": h.epsilon, "lo": h.lo, "hi": h.hi}


def encode_batch(batch: ReadingBatch) -> bytes:
    doc = {
        "v": SCHEMA_VERSION,
        "dev": batch.device,
        "e": batch.epoch,
        "p": {"u": batch.privacy.unit, "b": batch.privacy.budget},
        "ldp": _header_doc(batch.ldp),
        "r": [[r.seq, r.t, r.value] if r.stream == GLUCOSE else [r.seq, r.t, r.value, STREAMS.index(r.stream)]
              for r in batch.readings],
    }
    if batch.streams:
        doc["s"] = {name: _header_doc(h) for name, h in batch.streams.items()}
    return cbor2.dumps(doc)


def _require(cond: bool, reason: str) -> None:
    if not cond:
        raise SchemaError(reason)


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


LDP_MECHANISMS = ("none", "laplace", "duchi", "piecewise", "hybrid")
RAW_RANGE = (0.0, 1000.0)  # mg/dL; mechanism "none" sends raw CGM (studies only)


def _estimate_range(mech: str, eps: float | None, lo: float, hi: float) -> tuple[float, float]:
    """Every value the mechanism can output, in mg/dL (`federation.ldp_range`; unbiased estimates leave [lo, hi])."""
    if mech == "none":
        return RAW_RANGE
    return estimate_range(mechanism=mech, epsilon=eps, lo=lo, hi=hi)


def _int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _decode_header(ldp: object, stream: str) -> tuple[LDPHeader, float, float]:
    """One stream's LDP header and the range its values can take; SchemaError naming the stream otherwise."""
    where = "LDP header" if stream == GLUCOSE else f"{stream} LDP header"
    _require(isinstance(ldp, dict), f"{where} missing")
    mech, eps, lo, hi = ldp.get("m"), ldp.get("eps"), ldp.get("lo"), ldp.get("hi")
    _require(isinstance(mech, str) and mech != "", f"{where}: LDP mechanism missing")
    _require(mech in LDP_MECHANISMS, f"LDP mechanism {mech!r} unknown")
    _require(mech != "none" or stream == GLUCOSE, f"{where}: raw values (mechanism none) only for glucose studies")
    _require(mech == "none" or (_number(eps) and EPSILON_FLOOR <= eps <= epsilon_ceiling(mech)),
             f"LDP epsilon {eps!r} invalid for {mech!r}: policy allows [{EPSILON_FLOOR:g}, "
             f"{epsilon_ceiling(mech):g}] per release")
    _require(_number(lo) and _number(hi) and lo < hi, f"LDP clip range [{lo!r}, {hi!r}] invalid")
    limits = STREAM_CLIP_LIMITS[stream]
    _require(limits[0] <= lo and hi <= limits[1] and hi - lo >= MIN_CLIP_WIDTH,
             f"LDP clip range [{lo!r}, {hi!r}] outside the sensor range {list(limits)} {STREAM_UNITS[stream]} "
             f"(or narrower than {MIN_CLIP_WIDTH:g})")
    vmin, vmax = _estimate_range(mech, None if mech == "none" else float(eps), float(lo), float(hi))
    header = LDPHeader(mechanism=mech, epsilon=None if mech == "none" else float(eps), lo=float(lo), hi=float(hi))
    return header, vmin, vmax


def _decode_privacy(p: object) -> Privacy:
    _require(isinstance(p, dict), "privacy declaration (unit and budget) missing")
    unit, budget = p.get("u"), p.get("b")
    _require(unit in PRIVACY_UNITS, f"privacy unit {unit!r} is not one of {PRIVACY_UNITS}")
    if unit == PATIENT_DAY:
        _require(_number(budget) and 0 < budget <= MAX_DAY_BUDGET,
                 f"privacy budget {budget!r} per patient-day invalid: policy allows (0, {MAX_DAY_BUDGET:g}]")
    elif budget is not None:  # event-level: the device's cap per day, stated for the record
        _require(_number(budget) and budget > 0, f"daily cap {budget!r} of an event-level device invalid")
    return Privacy(unit=unit, budget=None if budget is None else float(budget))


def decode_batch(payload: bytes) -> ReadingBatch:
    """Parse and validate one batch; raises SchemaError with the reason on anything malformed."""
    _require(len(payload) <= MAX_PAYLOAD_BYTES, f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        doc = cbor2.loads(payload)
    except Exception as exc:  # cbor2 raises several types for garbage input
        raise SchemaError(f"not CBOR: {exc}") from exc
    _require(isinstance(doc, dict), "top level is not a map")
    _require(doc.get("v") == SCHEMA_VERSION, f"schema version {doc.get('v')!r} is not {SCHEMA_VERSION}")
    device = doc.get("dev")
    _require(isinstance(device, str) and 0 < len(device) <= 64, "device id missing or too long")
    epoch = doc.get("e")
    _require(_int(epoch) and 1 <= epoch <= MAX_EPOCH, f"bad epoch {epoch!r}: must be an integer in [1, 2**53 - 1]")
    headers = {GLUCOSE: _decode_header(doc.get("ldp"), GLUCOSE)}
    extra = doc.get("s", {})
    _require(isinstance(extra, dict) and set(extra) <= {INSULIN, CARBS},
             f"stream headers {sorted(extra) if isinstance(extra, dict) else extra!r}: only insulin and carbs")
    for name, h in extra.items():
        headers[name] = _decode_header(h, name)
    privacy = _decode_privacy(doc.get("p"))
    if privacy.unit == PATIENT_DAY:
        for name, (h, _lo, _hi) in headers.items():
            _require(h.epsilon is None or h.epsilon <= privacy.budget,
                     f"{name} epsilon {h.epsilon:g} per release exceeds the declared {privacy.budget:g} per "
                     "patient-day")
    rows = doc.get("r")
    _require(isinstance(rows, list) and 0 < len(rows) <= MAX_BATCH, "readings missing or batch too large")
    readings = []
    for row in rows:
        _require(isinstance(row, list) and len(row) in (3, 4), f"reading {row!r} is not [seq, t, value(, stream)]")
        seq, t, value = row[:3]
        k = row[3] if len(row) == 4 else 0
        _require(_int(k) and 0 <= k < len(STREAMS), f"bad stream index {k!r}: must be 0 (glucose), 1 or 2")
        stream = STREAMS[k]
        _require(stream in headers, f"a {stream} reading without a {stream} LDP header")
        header, vmin, vmax = headers[stream]
        _require(_int(seq) and 0 <= seq <= MAX_SEQ, f"bad sequence {seq!r}: must be an integer in [0, 2**53 - 1]")
        _require(_int(t) and TIME_RANGE[0] <= t <= TIME_RANGE[1],
                 f"bad timestamp {t!r}: must be integer unix seconds in [{TIME_RANGE[0]}, {TIME_RANGE[1]}]")
        _require(_number(value), f"reading value {value!r} is not a finite number")
        _require(vmin <= value <= vmax, f"reading value {value} outside [{vmin:.6g}, {vmax:.6g}] "
                                        f"({header.mechanism}, {stream})")
        readings.append(Reading(seq=seq, t=t, value=float(value), stream=stream))
    return ReadingBatch(device=device, epoch=epoch, ldp=headers[GLUCOSE][0], readings=tuple(readings),
                        streams={n: h for n, (h, _lo, _hi) in headers.items() if n != GLUCOSE}, privacy=privacy)
