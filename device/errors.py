"""Errors of the device tier, mapped to `WearfedError` so the CLI prints them as one line and exits 2.

    WearfedError (federation.errors)
    └── DeviceError
        ├── ProfileError     a firmware profile has a missing or impossible field (the message names it)
        ├── SpoolError       the on-disk store-and-forward queue cannot be opened or is inconsistent
        └── ProvisionError   broker credentials, ACL or certificates cannot be written or are invalid
"""

from federation.errors import ConfigError, WearfedError


class DeviceError(WearfedError):
    """Base of every error the device tier raises on purpose."""


class ProfileError(DeviceError, ConfigError):
    """A firmware profile has a missing or impossible field."""


class SpoolError(DeviceError):
    """The store-and-forward queue on disk cannot be used."""


class ProvisionError(DeviceError):
    """Provisioning (password file, ACL, TLS material) failed."""
