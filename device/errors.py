"""Errors of the device tier, mapped to `WearfedError` so the CLI prints them as one line and exits 2.

    WearfedError (federation.errors)
    └── DeviceError
        ├── ProfileError        a firmware profile or a command-line override has a missing or impossible field
        ├── SpoolError          the on-disk store-and-forward queue cannot be opened or is inconsistent
        ├── ProvisionError      broker credentials, ACL or certificates cannot be written or are invalid
        ├── LDPError            a bad local-DP parameter or input (device.ldp; also a ValueError)
        ├── OdometerStateError  the privacy odometer's state file is corrupt (never silently reset)
        ├── BudgetExhausted     a spend would pass the privacy budget of the day (device.odometer)
        ├── MqttError           the broker connection failed, was refused, timed out or broke the protocol
        └── ModelRefused        a model release failed verification (device.model_client; `reason` says which)
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
