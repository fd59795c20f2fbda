"""The replay's terminal output: the streaming bar ends full, and a held-back round prints why in plain words."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from rich.console import Console

from sim.report import RoundPrinter

REAL = Path(__file__).resolve().parents[1] / "data" / "report_summary.json"  # a real reduced `wearfed demo` run
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _printer(width: int = 100) -> tuple[RoundPrinter, io.StringIO]:
    out = io.StringIO()
    return RoundPrinter(Console(file=out, force_terminal=True, width=width, color_system=None)), out


def test_the_bar_fills_when_the_simulated_span_is_over_not_when_readings_reach_a_guess() -> None:
    printer, out = _printer()
    start, span = 1_767_225_600.0, 86_400.0
    with printer.streaming(start=start, span_s=span) as progress:
        progress(100, start + span / 2)
        progress(8_382, start + span + 600)  # past the span, fewer readings than devices x 288 (warm-up gaps)
    frames = [ANSI.sub("", f) for f in out.getvalue().replace("\r", "\n").split("\n") if "streaming" in f]
    assert frames, out.getvalue()
    assert "100%" in frames[-1] and "24.0/24.0 sim h" in frames[-1] and "8,382 readings" in frames[-1], frames[-1]
    assert all(len(f.rstrip()) <= 100 for f in frames)


def test_the_bar_is_completed_on_exit_even_if_the_clock_stopped_short() -> None:
    printer, out = _printer()
    with printer.streaming(start=0.0, span_s=3600.0) as progress:
        progress(5, 1800.0)
    last = [ANSI.sub("", f) for f in out.getvalue().replace("\r", "\n").split("\n") if "streaming" in f][-1]
    assert "100%" in last and "1.0/1.0 sim h" in last


def test_a_held_back_round_prints_the_gate_in_plain_words() -> None:
    row = json.loads(REAL.read_text())["rounds"][-1]
    assert row["state"] == "evaluated" and row["gates_failed"]  # the real run held its last round back
    printer, out = _printer(width=200)
    printer.round_table(row)
    text = ANSI.sub("", out.getvalue())
    assert text.startswith(f"round {row['round']}: evaluated"), text
    reason = " ".join(text.split("\n" + f"round {row['round']} held back: ", 1)[1].split())
    detail = row["gates_failed"].split(": ", 1)[1]
    assert reason == ("too few +30 min forecasts in Clarke zones A+B on hospitals' held-out patients (federated "
                      f"evaluation) ({detail})"), reason


def test_a_failed_round_prints_its_failure_reason() -> None:
    printer, out = _printer(width=200)
    printer.round_table({"round": 4, "state": "failed", "model_version": None,
                         "failure_reason": "quorum not met: 2 of 3", "epsilon": {}, "windows": {}, "refusals": []})
    assert "round 4: failed — quorum not met: 2 of 3" in ANSI.sub("", out.getvalue())
