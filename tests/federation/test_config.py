"""Daemons take flags or a TOML file whose keys are the flag names; flags win, unknown keys are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.cli import build_parser
from federation.config import apply_config
from federation.errors import ConfigError


def parse(argv: list[str]):  # noqa: ANN201
    args = build_parser().parse_args(argv)
    apply_config(args)
    return args


def test_toml_fills_what_the_command_line_left_out(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text('cloud-url = "http://cloud:9000"\nbroker_port = 2883\nepsilon-cap = 4.5\n')
    args = parse(["gateway", "run", "--id", "gw-7", "--state-dir", str(tmp_path), "--config", str(cfg),
                  "--broker-port", "1999"])
    assert args.cloud_url == "http://cloud:9000"
    assert args.epsilon_cap == 4.5
    assert args.broker_port == 1999  # the flag wins over the file


def test_unknown_key_is_refused_by_name(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("brokr_port = 1\n")
    with pytest.raises(ConfigError, match="brokr_port"):
        parse(["fleet", "run", "--gateways", "gw-1", "--config", str(cfg)])


def test_unreadable_toml_names_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "broken.toml"
    cfg.write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="broken.toml"):
        parse(["cloud", "serve", "--config", str(cfg)])


def test_every_tier_offers_its_commands() -> None:
    text = build_parser().format_help()
    for command in ("device", "fleet", "gateway", "hospital", "cloud", "demo"):
        assert command in text


def test_a_flag_given_with_its_default_value_still_beats_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text("broker-port = 2883\n")
    given = parse(["gateway", "run", "--id", "gw-7", "--state-dir", str(tmp_path), "--config", str(cfg),
                   "--broker-port", "1883"])  # 1883 is the flag's default: before, the file won
    assert given.broker_port == 1883
    left_out = parse(["gateway", "run", "--id", "gw-7", "--state-dir", str(tmp_path), "--config", str(cfg)])
    assert left_out.broker_port == 2883
    plain = parse(["gateway", "run", "--id", "gw-7", "--state-dir", str(tmp_path)])
    assert plain.broker_port == 1883 and plain.config is None


def test_a_config_value_of_the_wrong_type_names_the_setting(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text('broker-port = "not a port"\n')
    with pytest.raises(ConfigError, match="broker-port"):
        parse(["gateway", "run", "--id", "gw-7", "--state-dir", str(tmp_path), "--config", str(cfg)])
