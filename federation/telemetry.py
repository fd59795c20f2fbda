"""Device telemetry wire format: versioned CBOR batches of locally-privatised glucose readings.

Topic layout (MQTT): ``wearfed/v1/<gateway>/<device>/readings`` for data and
``wearfed/v1/<gateway>/<device>/status`` (retained) for device status.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cbor2

from federation.errors import SchemaError

SCHEMA_VERSION = 1
TOPIC_ROOT = "wearfed/v1"
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_BATCH = 512


def readings_topic(gateway: str, device: str) -> str:
    return f"{TOPIC_ROOT}/{gateway}/{device}/readings"


def status_topic(gateway: str, device: str) -> str:
    return f"{TOPIC_ROOT}/{gateway}/{device}/status"


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
    value: float  # privatised estimate, mg/dL


@dataclass(frozen=True)
class ReadingBatch:
    device: str
    ldp: LDPHeader
    readings: tuple[Reading, ...]


def encode_batch(batch: ReadingBatch) -> bytes:
    return cbor2.dumps(
        {
            "v": SCHEMA_VERSION,
            "dev": batch.device,
            "ldp": {"m": batch.ldp.mechanism, "eps": batch.ldp.epsilon, "lo": batch.ldp.lo, "hi": batch.ldp.hi},
            "r": [[r.seq, r.t, r.value] for r in batch.readings],
        }
    )


def _require(cond: bool, reason: str) -> None:
    if not cond:
        raise SchemaError(reason)


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


LDP_MECHANISMS = ("none", "laplace", "duchi", "piecewise", "hybrid")
RAW_RANGE = (0.0, 1000.0)  # mg/dL; mechanism "none" sends raw CGM (studies only)


def _estimate_range(mech: str, eps: float | None, lo: float, hi: float) -> tuple[float, float]:
    """Every value the mechanism can output, mapped from [-1, 1] back to mg/dL (unbiased estimates leave [lo, hi]).

    Output bounds on [-1, 1]: Duchi et al. 2018, C_D = coth(eps/2); Piecewise (Wang et al., ICDE 2019,
    Sec. III-A), C = coth(eps/4); Hybrid mixes the two and coth(eps/4) >= coth(eps/2) bounds both; Laplace is
    unbounded (any finite value is a possible output).
    """
    if mech == "none":
        return RAW_RANGE
    if mech == "laplace":
        return -math.inf, math.inf
    c = 1.0 / math.tanh(eps / 2 if mech == "duchi" else eps / 4)
    half, mid = (hi - lo) / 2, (hi + lo) / 2
    slack = 1e-9 * (abs(mid) + half * c)  # float rounding on the device
    return mid - half * c - slack, mid + half * c + slack


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
    ldp = doc.get("ldp")
    _require(isinstance(ldp, dict), "LDP header missing")
    mech, eps, lo, hi = ldp.get("m"), ldp.get("eps"), ldp.get("lo"), ldp.get("hi")
    _require(isinstance(mech, str) and mech != "", "LDP mechanism missing")
    _require(mech in LDP_MECHANISMS, f"LDP mechanism {mech!r} unknown")
    _require(mech == "none" or (_number(eps) and 0 < eps <= 100), f"LDP epsilon {eps!r} invalid for {mech!r}")
    _require(_number(lo) and _number(hi) and lo < hi, f"LDP clip range [{lo!r}, {hi!r}] invalid")
    vmin, vmax = _estimate_range(mech, None if mech == "none" else float(eps), float(lo), float(hi))
    rows = doc.get("r")
    _require(isinstance(rows, list) and 0 < len(rows) <= MAX_BATCH, "readings missing or batch too large")
    readings = []
    for row in rows:
        _require(isinstance(row, list) and len(row) == 3, f"reading {row!r} is not [seq, t, value]")
        seq, t, value = row
        _require(isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0, f"bad sequence {seq!r}")
        _require(isinstance(t, int) and not isinstance(t, bool) and t > 0, f"bad timestamp {t!r}")
        _require(_number(value), f"reading value {value!r} is not a finite number")
        _require(vmin <= value <= vmax, f"reading value {value} outside [{vmin:.6g}, {vmax:.6g}] ({mech})")
        readings.append(Reading(seq=seq, t=t, value=float(value)))
    header = LDPHeader(mechanism=mech, epsilon=None if mech == "none" else float(eps), lo=float(lo), hi=float(hi))
    return ReadingBatch(device=device, ldp=header, readings=tuple(readings))
