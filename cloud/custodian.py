"""Key custodian: holds the CKKS secret context and decrypts only quorum aggregates.

`Custodian.dev_unsealed` is the demo's INSECURE mode: the secret key sits unsealed on the aggregator's host.
Sealed custody (AEAD under a Shamir-split data key) is a separate constructor, never a flag.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from federation import ckks

INSECURE_LABEL = "INSECURE DEV MODE: key custodian auto-unsealed; the secret key is on this host"
log = logging.getLogger(__name__)


class CustodianRefusal(PermissionError):
    """The custodian declined to decrypt (not a quorum aggregate)."""


class Custodian:
    def __init__(self, secret_context_bytes: bytes, *, mode: str) -> None:
        self._secret = ckks.load_context(secret_context_bytes)
        if not self._secret.has_secret_key():
            raise ckks.CKKSError("custodian context has no secret key")
        self.mode = mode
        self.public_context_bytes = ckks.public_bytes(self._secret)

    @classmethod
    def dev_unsealed(cls, state_dir: Path) -> Custodian:
        """Create or load an unsealed secret context under state_dir. INSECURE: for demos and tests only."""
        key_dir = state_dir / "custodian-INSECURE-dev"
        key_dir.mkdir(parents=True, exist_ok=True)
        path = key_dir / "secret-context.bin"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(ckks.serialize_secret(ckks.new_secret_context()))
            tmp.chmod(0o600)
            tmp.replace(path)
        log.warning("%s (%s)", INSECURE_LABEL, path)
        return cls(path.read_bytes(), mode="insecure-dev-unsealed")

    def decrypt_aggregate(self, blob: bytes, *, contributors: Sequence[str], quorum: int) -> np.ndarray:
        """Decrypt a sum of at least `quorum` distinct participants' updates; refuse anything else."""
        distinct = set(contributors)
        if len(distinct) != len(contributors):
            raise CustodianRefusal(f"contributors are not distinct: {sorted(contributors)}")
        if len(distinct) < max(quorum, 2):
            raise CustodianRefusal(
                f"refusing to decrypt: aggregate of {len(distinct)} participant(s), quorum is {max(quorum, 2)}"
            )
        return ckks.decrypt(self._secret, blob)
