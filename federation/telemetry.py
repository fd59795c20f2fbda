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
# Privatised readings are unbiased estimates and may leave the clip range; anything past this is garbage.
PLAUSIBLE_ESTIMATE = (-20_000.0, 20_000.0)


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
    _require(mech == "none" or (_number(eps) and eps > 0), f"LDP epsilon {eps!r} invalid for {mech!r}")
    _require(_number(lo) and _number(hi) and lo < hi, f"LDP clip range [{lo!r}, {hi!r}] invalid")
    rows = doc.get("r")
    _require(isinstance(rows, list) and 0 < len(rows) <= MAX_BATCH, "readings missing or batch too large")
    readings = []
    for row in rows:
        _require(isinstance(row, list) and len(row) == 3, f"reading {row!r} is not [seq, t, value]")
        seq, t, value = row
        _require(isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0, f"bad sequence {seq!r}")
        _require(isinstance(t, int) and not isinstance(t, bool) and t > 0, f"bad timestamp {t!r}")
        _require(_number(value), f"reading value {value!r} is not a finite number")
        _require(PLAUSIBLE_ESTIMATE[0] <= value <= PLAUSIBLE_ESTIMATE[1], f"reading value {value} out of range")
        readings.append(Reading(seq=seq, t=t, value=float(value)))
    header = LDPHeader(mechanism=mech, epsilon=None if mech == "none" else float(eps), lo=float(lo), hi=float(hi))
    return ReadingBatch(device=device, ldp=header, readings=tuple(readings))
