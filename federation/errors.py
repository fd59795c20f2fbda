"""Errors of the shared contract.

    WearfedError
    ├── SchemaError        a message or file does not match its versioned schema
    │   └── CKKSError      a ciphertext or context does not parse or match the parameters (federation.ckks)
    ├── SignatureError     an Ed25519 signature or key does not verify
    ├── VerificationError  a Merkle proof or signed checkpoint does not verify (federation.merkle)
    ├── ConfigError        a configuration value is missing or impossible
    └── MissingExtra       a command needs an optional dependency that is not installed

Each tier draws its own tree under WearfedError (device/errors.py, gateway/errors.py, cloud/errors.py,
sim/importers/errors.py); third-party errors are converted at the boundary with `raise ... from exc`.
"""


class WearfedError(Exception):
    """Base of every error wearfed raises on purpose."""


class SchemaError(WearfedError, ValueError):
    """A message or file does not match its versioned schema."""


class SignatureError(WearfedError):
    """An Ed25519 signature or public key does not verify."""


class ConfigError(WearfedError, ValueError):
    """A configuration value is missing or impossible; the message names the field."""


class MissingExtra(WearfedError, ImportError):
    """A command needs an optional dependency; the message names the extra to install."""

    def __init__(self, extra: str, missing: str) -> None:
        super().__init__(f"this command needs the '{extra}' extra (missing: {missing}); "
                         f"install it with: pip install 'wearfed[{extra}]'")
        self.extra = extra
