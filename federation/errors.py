"""Errors of the shared contract.

    WearfedError
    ├── SchemaError        a message or file does not match its versioned schema
    ├── SignatureError     an Ed25519 signature or key does not verify
    ├── VerificationError  a Merkle proof or signed checkpoint does not verify (federation.merkle)
    └── ConfigError        a configuration value is missing or impossible
"""


class WearfedError(Exception):
    """Base of every error wearfed raises on purpose."""


class SchemaError(WearfedError, ValueError):
    """A message or file does not match its versioned schema."""


class SignatureError(WearfedError):
    """An Ed25519 signature or public key does not verify."""


class ConfigError(WearfedError, ValueError):
    """A configuration value is missing or impossible; the message names the field."""
