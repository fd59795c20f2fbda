"""Telemetry wire format: round trip, and every malformed payload is a SchemaError (never another exception)."""

from __future__ import annotations

import contextlib

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.errors import SchemaError
from federation.telemetry import (
    MAX_BATCH,
    LDPHeader,
    Reading,
    ReadingBatch,
    Topic,
    decode_batch,
    encode_batch,
    readings_topic,
)

HEADER = LDPHeader(mechanism="piecewise", epsilon=4.0, lo=40.0, hi=400.0)


def test_round_trip_of_all_streams_and_the_privacy_declaration() -> None:
    from federation.telemetry import Privacy

    ins, carbs = LDPHeader("hybrid", 0.3, 0.0, 30.0), LDPHeader("duchi", 0.3, 0.0, 200.0)
    b = ReadingBatch(epoch=9, device="d1", ldp=HEADER, streams={"insulin": ins, "carbs": carbs},
                     privacy=Privacy("patient-day", 8.0),
                     readings=(Reading(0, T0, 101.5), Reading(1, T0 + 3600, 2.5, "insulin"),
                               Reading(2, T0 + 3600, 40.0, "carbs")))
    assert decode_batch(encode_batch(b)) == b


def test_round_trip() -> None:
    b = ReadingBatch(epoch=2 ** 53 - 1, device="d1", ldp=HEADER, readings=(Reading(0, 1_767_225_600, 101.5),
                                                                        Reading(1, 1_767_225_900, -3.25)))
    assert decode_batch(encode_batch(b)) == b


T0 = 1_767_225_600
RAW = {"m": "none", "eps": None, "lo": 40, "hi": 400}


def _lap(**kw: object) -> dict:
    return {"m": "laplace", "eps": 1, "lo": 40, "hi": 400, **kw}


@pytest.mark.parametrize("doc, reason", [
    ({"v": 99}, "schema version"),
    ({"v": 2, "dev": "", "e": 1, "p": {"u": "reading"}, "ldp": {}, "r": []}, "device id"),
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "reading"}, "r": [[0, T0, 1.0]]}, "LDP header missing"),
    ({"v": 2, "dev": "d", "ldp": RAW, "r": [[0, T0, 1.0]]}, "epoch"),
    ({"v": 2, "dev": "d", "e": 0, "ldp": RAW, "r": [[0, T0, 1.0]]}, "epoch"),
    ({"v": 2, "dev": "d", "e": 2 ** 63, "ldp": RAW, "r": [[0, T0, 1.0]]}, "epoch"),
    ({"v": 2, "dev": "d", "e": True, "ldp": RAW, "r": [[0, T0, 1.0]]}, "epoch"),
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "reading"}, "ldp": _lap(eps=0), "r": [[0, T0, 1.0]]}, "epsilon"),
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "reading"}, "ldp": _lap(eps=1e-300), "r": [[0, T0, 1.0]]}, "epsilon .* policy"),  # noqa: E501
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "reading"}, "ldp": _lap(eps=1e6), "r": [[0, T0, 1.0]]}, "epsilon .* policy"),  # noqa: E501
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "reading"}, "ldp": _lap(lo=400, hi=40), "r": [[0, T0, 1.0]]}, "clip"),
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "reading"}, "ldp": _lap(lo=-1e308, hi=1e308), "r": [[0, T0, 1.0]]}, "clip range .* sensor range"),  # noqa: E501
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "reading"}, "ldp": _lap(lo=100, hi=100.5), "r": [[0, T0, 1.0]]}, "narrower"),  # noqa: E501
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "reading"}, "ldp": RAW, "r": []}, "readings"),
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "reading"}, "ldp": RAW, "r": [[-1, T0, 1.0]]}, "sequence"),
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "reading"}, "ldp": RAW, "r": [[2 ** 63, T0, 1.0]]}, "sequence"),
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "reading"}, "ldp": RAW, "r": [[2 ** 53, T0, 1.0]]}, "sequence"),
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "reading"}, "ldp": RAW, "r": [[0, 0, 1.0]]}, "timestamp"),
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "reading"}, "ldp": RAW, "r": [[0, 2 ** 63, 1.0]]}, "timestamp"),
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "reading"}, "ldp": RAW, "r": [[0, T0, "x"]]}, "finite"),
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "reading"}, "ldp": _lap(), "r": [[0, T0, 1e308]]}, "outside"),
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "reading"}, "ldp": _lap(), "r": [[0, T0, -1e308]]}, "outside"),
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "reading"}, "ldp": RAW, "r": [[i, T0, 1.0] for i in range(MAX_BATCH + 1)]}, "too large"),  # noqa: E501
    ({"v": 2, "dev": "d", "e": 1, "ldp": _lap(), "r": [[0, T0, 1.0]]}, "privacy declaration"),
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "week"}, "ldp": _lap(), "r": [[0, T0, 1.0]]}, "privacy unit"),
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "patient-day"}, "ldp": _lap(), "r": [[0, T0, 1.0]]}, "budget"),
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "patient-day", "b": 1e9}, "ldp": _lap(), "r": [[0, T0, 1.0]]}, "budget"),
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "patient-day", "b": 0.5}, "ldp": _lap(), "r": [[0, T0, 1.0]]},
     "exceeds the declared"),
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "reading"}, "ldp": _lap(), "r": [[0, T0, 1.0, 1]]}, "without a insulin"),
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "reading"}, "ldp": _lap(), "r": [[0, T0, 1.0, 7]]}, "stream index"),
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "reading"}, "ldp": _lap(), "s": {"bolus": _lap()},
      "r": [[0, T0, 1.0]]}, "only insulin and carbs"),
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "reading"}, "ldp": _lap(), "s": {"insulin": _lap(lo=0, hi=1e6)},
      "r": [[0, T0, 1.0, 1]]}, "insulin|sensor range"),
    ({"v": 2, "dev": "d", "e": 1, "p": {"u": "reading"}, "ldp": _lap(), "s": {"carbs": RAW},
      "r": [[0, T0, 1.0, 2]]}, "only for glucose"),
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


def test_topics_are_built_and_parsed_in_one_place() -> None:
    from federation.telemetry import MODEL, READINGS, STATUS, model_topic, parse_topic, status_topic

    assert parse_topic(readings_topic("gw-1", "gw-1-dev001")) == Topic("gw-1", "gw-1-dev001", READINGS)
    assert parse_topic(status_topic("gw-1", "d")) == Topic("gw-1", "d", STATUS)
    assert parse_topic(model_topic("gw-1")) == Topic("gw-1", None, MODEL)
    for bad in ("wearfed/v1/gw-1/d/other", "wearfed/v2/gw-1/d/readings", "wearfed/v1/gw-1/d/x/readings", "",
                "wearfed/v1//d/readings", "wearfed/v1/gw-1/model/extra"):
        with pytest.raises(SchemaError, match="topic"):
            parse_topic(bad)
    for gw, dev in (("gw/1", "d"), ("gw", "d+"), ("gw", "#"), ("", "d"), ("gw", "x" * 65)):
        with pytest.raises(SchemaError, match="topic level"):
            readings_topic(gw, dev)
