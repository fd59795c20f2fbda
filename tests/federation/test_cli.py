"""The umbrella command: tiers come from entry points, a broken tier fails loudly, a missing extra is named."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from federation import cli
from federation.errors import MissingExtra
from federation.extras import require


def test_tiers_register_through_entry_points() -> None:
    names = {ep.name for ep in cli.entry_points(group=cli.ENTRY_POINT_GROUP)}
    assert {"device", "gateway", "cloud", "sim"} <= names


def test_a_broken_tier_is_not_silently_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = EntryPoint(name="broken", value="no_such_module_wearfed.cli:register", group=cli.ENTRY_POINT_GROUP)
    monkeypatch.setattr(cli, "entry_points", lambda group: [broken])
    with pytest.raises(ModuleNotFoundError, match="no_such_module_wearfed"):
        cli.build_parser()


def test_a_missing_extra_names_the_extra(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(MissingExtra, match=r"pip install 'wearfed\[gateway\]'.*|missing: no_such_mod"):
        require("gateway", "no_such_mod_wearfed")
    require("cloud")  # installed here: no error
