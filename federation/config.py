"""Every daemon is configured by flags or a TOML file whose keys are the flags' names (dashes or underscores)."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

from federation.errors import ConfigError


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML file; its keys override the defaults, flags override it")
    parser.set_defaults(_parser=parser)


def apply_config(args: argparse.Namespace) -> None:
    """Fill every argument the user did not give on the command line from the TOML file."""
    path: Path | None = getattr(args, "config", None)
    if path is None:
        return
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    parser: argparse.ArgumentParser = args._parser
    known = {a.dest: a for a in parser._actions}
    for key, value in doc.items():
        dest = key.replace("-", "_")
        if dest not in known or dest in ("config", "help"):
            raise ConfigError(f"{path}: unknown setting {key!r}")
        if getattr(args, dest) == parser.get_default(dest):
            action = known[dest]
            setattr(args, dest, action.type(value) if action.type and not isinstance(value, list) else value)
