"""The umbrella `wearfed` command. Each tier registers its own subcommands from its own `cli` module, found through
the ``wearfed.commands`` entry points of the installed distribution (pyproject.toml), never by name here.

A tier's `cli` module imports only what argparse needs; a command whose tier extra is not installed (a Pi with
`wearfed[device]` has no torch) fails when it runs, with the extra to install (`MissingExtra`), and a tier whose
`cli` module is broken fails loudly instead of silently dropping its commands.

One handler (`main`) turns every error into a one-line message and an exit code (`exit_code_for`): 2 for bad input
(wearfed's own errors, invalid settings, missing or unreadable files, impossible database URLs, an unreachable
cloud, input that ended early), 130 for Ctrl-C, 1 for anything unexpected. No traceback is printed unless
`WEARFED_DEBUG=1` or `wearfed --debug ...`. Every `--help` line shows its default (`DefaultsHelpFormatter`).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from importlib.metadata import entry_points

from federation.config import ORIGINAL_DEFAULT, _parsers, apply_config, defer_defaults
from federation.errors import WearfedError

ENTRY_POINT_GROUP = "wearfed.commands"
DEBUG_ENV = "WEARFED_DEBUG"
SECRET_WORDS = ("token", "password", "passphrase", "secret")  # never echo an env-supplied secret in --help


def default_note(action: argparse.Action) -> str:
    """"(default: X)" for an option's help, also for defaults `federation.config` keeps aside; "" for None/False
    defaults, secrets (an env var may supply them) and positionals."""
    default = getattr(action, ORIGINAL_DEFAULT, action.default)
    if (not action.option_strings or default in (None, False, argparse.SUPPRESS) or default == []
            or any(w in action.dest for w in SECRET_WORDS) or isinstance(action, argparse._HelpAction)):
        return ""
    shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else default
    return f"(default: {str(shown).replace('%', '%%')})"


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends `default_note` to every option's help that does not already name its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        note = default_note(action)
        return f"{text} {note}".strip() if note and "default" not in text else text


def _document_defaults(root: argparse.ArgumentParser) -> None:
    """Options without a help line get one saying their default (argparse prints nothing for them otherwise)."""
    for parser in _parsers(root):
        for action in parser._actions:
            if action.help is None and default_note(action):
                action.help = default_note(action)


class WearfedParser(argparse.ArgumentParser):
    """A parser that fills a command's settings (flag > TOML > default, `federation.config`) as it parses, so every
    caller of `parse_args` gets complete arguments. Subcommand parsers inherit the class and the help formatter."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - argparse's signature
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201 - argparse's signature
        ns, extras = super().parse_known_args(args, namespace)
        if getattr(ns, "_parser", None) is self:
            apply_config(ns)
        return ns, extras


def build_parser() -> argparse.ArgumentParser:
    parser = WearfedParser(prog="wearfed", description="privacy-first federated learning for CGMs")
    parser.add_argument("--debug", action="store_true",
                        help=f"print the traceback of an error (also env {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    found = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
    if not found:
        raise WearfedError(f"no {ENTRY_POINT_GROUP} entry points: is wearfed installed (pip install -e .)?")
    for ep in found:
        ep.load()(sub)
    defer_defaults(parser)
    _document_defaults(parser)
    return parser


def _is(exc: BaseException, module: str, name: str) -> bool:
    """isinstance against a third-party class, without importing its package when the command never did."""
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    return cls is not None and isinstance(exc, cls)


def _validation_message(exc: Exception) -> str:
    """pydantic's errors as `field.path: message (got value)`, one per line."""
    lines = []
    for err in exc.errors():  # type: ignore[attr-defined]
        where = ".".join(str(p) for p in err.get("loc", ())) or exc.title  # type: ignore[attr-defined]
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict | list) else ""
        lines.append(f"{where}: {err.get('msg')}{got}")
    return f"invalid {exc.title}: " + "; ".join(lines)  # type: ignore[attr-defined]


def exit_code_for(exc: BaseException) -> tuple[int, str]:
    """(exit code, message) for an error that reached the top of a command."""
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(exc, WearfedError):
        return 2, str(exc)
    if _is(exc, "pydantic_core", "ValidationError"):
        return 2, _validation_message(exc)  # type: ignore[arg-type]
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        name = exc.filename if getattr(exc, "filename", None) is not None else ""
        return 2, f"{name}: {exc.strerror or exc}" if name else str(exc)
    if _is(exc, "sqlalchemy.exc", "ArgumentError"):
        return 2, (f"database URL: {exc}. Give a SQLAlchemy URL such as sqlite:///relative/cloud.db, "
                   "sqlite:////absolute/cloud.db or postgresql+psycopg2://user@host/db")
    if _is(exc, "sqlalchemy.exc", "OperationalError"):
        return 2, f"database: {getattr(exc, 'orig', None) or exc}"
    if _is(exc, "httpx", "TransportError"):
        request = getattr(exc, "_request", None)
        url = f" at {request.url.scheme}://{request.url.netloc.decode()}" if request is not None else ""
        return 2, f"cannot reach the cloud{url}: {exc or type(exc).__name__}"
    if isinstance(exc, EOFError):
        return 2, "the input ended before the command had what it needed (end the input with an empty line)"
    if isinstance(exc, OSError):
        return 2, str(exc)
    return 1, f"unexpected {type(exc).__name__}: {exc} (run with {DEBUG_ENV}=1 for the traceback)"


def _debug(argv: list[str]) -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0") or "--debug" in argv


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except SystemExit as exc:  # argparse's own (usage printed) or a command's `raise SystemExit("message")`
        if isinstance(exc.code, str):
            print(f"wearfed: error: {exc.code.removeprefix('wearfed: error: ')}", file=sys.stderr)
            return 2
        return 0 if exc.code is None else int(exc.code)
    except BaseException as exc:  # noqa: BLE001 - the one place every error becomes a message and an exit code
        code, message = exit_code_for(exc)
        if _debug(argv):
            traceback.print_exc()
        if code != 130:
            print(f"wearfed: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
