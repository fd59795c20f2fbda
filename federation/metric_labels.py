"""Bounded label values for Prometheus counters: a free-text reason mapped to a fixed class by regular expressions."""

from __future__ import annotations

import re


def first_match(text: str | None, classes: tuple[tuple[str, str], ...], default: str) -> str:
    """The class of the first (pattern, class) whose pattern occurs in `text` (case-insensitive), else `default`."""
    for pattern, name in classes:
        if re.search(pattern, text or "", flags=re.IGNORECASE):
            return name
    return default
