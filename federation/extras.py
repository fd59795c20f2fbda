"""Optional dependencies by extra: a command checks for what it needs before importing it, so a missing package is a
clear "install wearfed[<extra>]" message (`federation.errors.MissingExtra`), never an ImportError traceback."""

from __future__ import annotations

import importlib.util

from federation.errors import MissingExtra

# what each extra of pyproject.toml brings that its commands import (module names, not distribution names)
EXTRAS: dict[str, tuple[str, ...]] = {
    "device": ("paho",),
    "gateway": ("paho", "torch", "opacus", "tenseal", "httpx", "pydantic"),
    "cloud": ("fastapi", "uvicorn", "sqlalchemy", "tenseal", "httpx", "pydantic", "opacus", "torch", "Crypto"),
    "sim": ("amqtt", "rich", "pyarrow", "scipy", "matplotlib"),
    "inference": ("ai_edge_litert",),
}


def require(extra: str, *modules: str) -> None:
    """Raise MissingExtra naming `extra` if any of `modules` (default: all of the extra's) is not importable."""
    for name in modules or EXTRAS[extra]:
        if importlib.util.find_spec(name) is None:
            raise MissingExtra(extra, name)
