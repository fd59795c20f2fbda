"""Every daemon is configured by flags or a TOML file whose keys are the flags' names (dashes or underscores).

Precedence: a flag given on the command line (even with its default value) > the TOML file > the default. To tell
"given" from "left at its default", `defer_defaults` moves the defaults of every command that takes `--config` out
of argparse (its actions get `argparse.SUPPRESS`, so an absent flag leaves no attribute); `apply_config` then fills
what is missing from the file, then from the stored defaults. The umbrella CLI calls both for every command.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

from federation.errors import ConfigError

_DEFAULTS = "_wearfed_defaults"
ORIGINAL_DEFAULT = "wearfed_default"  # kept on each deferred action, for --help (federation.cli)


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML file; its keys override the defaults, flags override it")
    parser.set_defaults(_parser=parser)


def _parsers(parser: argparse.ArgumentParser):  # noqa: ANN202 - an iterator of ArgumentParser (every subcommand)
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser once
                yield from _parsers(child)


def defer_defaults(root: argparse.ArgumentParser) -> None:
    """Keep the defaults of every command with `--config` aside, so flags left out can be told from flags given."""
    for parser in _parsers(root):
        if parser.get_default("_parser") is not parser or hasattr(parser, _DEFAULTS):
            continue
        defaults = {}
        for action in parser._actions:
            if action.dest in ("help", "config") or action.default is argparse.SUPPRESS:
                continue
            defaults[action.dest] = action.default
            setattr(action, ORIGINAL_DEFAULT, action.default)
            action.default = argparse.SUPPRESS
        setattr(parser, _DEFAULTS, defaults)


def apply_config(args: argparse.Namespace) -> None:
    """Fill every argument the user did not give on the command line: from the TOML file, then the default."""
    parser: argparse.ArgumentParser | None = getattr(args, "_parser", None)
    if parser is None or getattr(args, "_config_applied", False):
        return
    args._config_applied = True
    defaults: dict = getattr(parser, _DEFAULTS, {})
    path: Path | None = getattr(args, "config", None)
    doc = {}
    if path is not None:
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
    known = {a.dest: a for a in parser._actions}
    for key, value in doc.items():
        dest = key.replace("-", "_")
        if dest not in known or dest in ("config", "help"):
            raise ConfigError(f"{path}: unknown setting {key!r}")
        if dest in defaults and hasattr(args, dest):
            continue  # given on the command line: the flag wins
        action = known[dest]
        try:
            setattr(args, dest, action.type(value) if action.type and not isinstance(value, list) else value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: setting {key!r}: {exc}") from exc
    for dest, default in defaults.items():
        if not hasattr(args, dest):
            setattr(args, dest, default)
