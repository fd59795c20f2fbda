"""The umbrella `wearfed` command. Each tier registers its own subcommands from its own `cli` module.

Tiers are named here only as module paths and imported on start-up; a tier whose extra is not installed
(a Pi with `wearfed[device]` has no torch) simply does not offer its subcommands.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from federation.errors import WearfedError

TIER_CLIS = ("device.cli", "gateway.cli", "cloud.cli", "sim.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wearfed", description="privacy-first federated learning for CGMs")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in TIER_CLIS:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # the tier's extra is not installed here
            parser.epilog = (parser.epilog or "") + f"\n({name.split('.')[0]} commands unavailable: {exc})"
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except WearfedError as exc:
        print(f"wearfed: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
