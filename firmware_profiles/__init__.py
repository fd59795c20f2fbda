"""The shipped firmware profiles (`*.toml`), installed with the package; `device.profiles` loads them."""

# Device names shared by a firmware profile (`wearfed device run --profile`) and a simulated sensor (`wearfed cohort
# generate --sensor`): one canonical spelling, older spellings accepted everywhere.
ALIASES = {"libre3": "libre-3"}


def canonical_name(name: str) -> str:
    """The canonical spelling of a device name (`libre3` -> `libre-3`); other names unchanged."""
    return ALIASES.get(name, name)
