"""Telemetry wire format: round trip, and every malformed payload is a SchemaError (never another exception)."""

from __future__ import annotations

import contextlib

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.errors import SchemaError
from federation.telemetry import MAX_BATCH, LDPHeader, Reading, ReadingBatch, decode_batch, encode_batch

HEADER = LDPHeader(mechanism="piecewise", epsilon=4.0, lo=40.0, hi=400.0)


def test_round_trip() -> None:
    b = ReadingBatch(device="d1", ldp=HEADER, readings=(Reading(0, 1_767_225_600, 101.5),
                                                        Reading(1, 1_767_225_900, -3.25)))
    assert decode_batch(encode_batch(b)) == b


@pytest.mark.parametrize("doc, reason", [
    ({"v": 2}, "schema version"),
    ({"v": 1, "dev": "", "ldp": {}, "r": []}, "device id"),
    ({"v": 1, "dev": "d", "r": [[0, 1, 1.0]]}, "LDP header missing"),
    ({"v": 1, "dev": "d", "ldp": {"m": "laplace", "eps": 0, "lo": 40, "hi": 400}, "r": [[0, 1, 1.0]]}, "epsilon"),
    ({"v": 1, "dev": "d", "ldp": {"m": "laplace", "eps": 1, "lo": 400, "hi": 40}, "r": [[0, 1, 1.0]]}, "clip"),
    ({"v": 1, "dev": "d", "ldp": {"m": "none", "eps": None, "lo": 40, "hi": 400}, "r": []}, "readings"),
    ({"v": 1, "dev": "d", "ldp": {"m": "none", "eps": None, "lo": 40, "hi": 400}, "r": [[-1, 1, 1.0]]}, "sequence"),
    ({"v": 1, "dev": "d", "ldp": {"m": "none", "eps": None, "lo": 40, "hi": 400}, "r": [[0, 0, 1.0]]}, "timestamp"),
    ({"v": 1, "dev": "d", "ldp": {"m": "none", "eps": None, "lo": 40, "hi": 400}, "r": [[0, 1, "x"]]}, "finite"),
    ({"v": 1, "dev": "d", "ldp": {"m": "none", "eps": None, "lo": 40, "hi": 400},
      "r": [[i, 1, 1.0] for i in range(MAX_BATCH + 1)]}, "too large"),
])
def test_malformed_documents_name_the_problem(doc: dict, reason: str) -> None:
    with pytest.raises(SchemaError, match=reason):
        decode_batch(cbor2.dumps(doc))


def test_oversized_payload_is_refused_before_parsing() -> None:
    with pytest.raises(SchemaError, match="exceeds"):
        decode_batch(b"\x00" * 70_000)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_ever_raise_schema_error(data: bytes) -> None:
    with contextlib.suppress(SchemaError):
        decode_batch(data)
