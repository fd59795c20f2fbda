"""Key custodian: holds the CKKS secret context and decrypts only aggregates the ledger backs.

Two named constructors, never a flag: `Custodian.from_shares` opens the sealed secret context with k of the
n Shamir shares (`cloud.custody`); `Custodian.dev_unsealed` is the demo's INSECURE mode, where the secret key
sits unsealed on the aggregator's host.

`decrypt_aggregate` does not trust the aggregate it is handed: it checks every ledger row (Ed25519 signature
over the envelope with the participant's enrolled key, ciphertext hash, one row per distinct participant,
each hash recorded as accepted in the audit ledger), rebuilds the homomorphic sum from the stored
ciphertexts itself, and decrypts only if that sum is byte-identical to the requested aggregate.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cloud import custody
from federation import ckks
from federation.errors import SignatureError
from federation.signing import verify

INSECURE_LABEL = "INSECURE DEV MODE: key custodian auto-unsealed; the secret key is on this host"
log = logging.getLogger(__name__)


class CustodianRefusal(PermissionError):
    """The custodian declined to decrypt (not a quorum aggregate the ledger backs)."""


@dataclass(frozen=True)
class LedgerUpdate:
    """One accepted update as the ledger holds it."""

    participant: str
    public_key: str
    envelope: dict
    signature: str
    ciphertext: bytes


class Custodian:
    def __init__(self, secret_context_bytes: bytes, *, mode: str) -> None:
        self._secret = ckks.load_context(secret_context_bytes)
        if not self._secret.has_secret_key():
            raise ckks.CKKSError("custodian context has no secret key")
        self.mode = mode
        self.public_context_bytes = ckks.public_bytes(self._secret)

    @property
    def insecure(self) -> bool:
        return self.mode.startswith("insecure")

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

    @classmethod
    def from_shares(cls, sealed: custody.Sealed, shares: Sequence[str]) -> Custodian:
        """Open the sealed secret context with at least `sealed.threshold` custodians' shares."""
        secret = custody.unseal(sealed, shares)
        custodian = cls(secret, mode="sealed-shamir")
        if custody.key_id_of(custodian.public_context_bytes) != sealed.key_id:
            raise custody.CustodyError("unsealed context does not match the published public context")
        return custodian

    def decrypt_aggregate(self, aggregate: bytes, *, updates: Sequence[LedgerUpdate], quorum: int,
                          accepted_hashes: set[str]) -> np.ndarray:
        """Decrypt `aggregate` only if it is the sum of >= quorum distinct, ledger-backed, signed updates."""
        need = max(quorum, 2)
        participants = [u.participant for u in updates]
        if len(set(participants)) != len(participants):
            raise CustodianRefusal(f"contributors are not distinct: {sorted(participants)}")
        if len(participants) < need:
            raise CustodianRefusal(f"refusing to decrypt: aggregate of {len(participants)} participant(s), "
                                   f"quorum is {need}")
        for u in updates:
            digest = hashlib.sha256(u.ciphertext).hexdigest()
            if u.envelope.get("participant") != u.participant or u.envelope.get("ciphertext_sha256") != digest:
                raise CustodianRefusal(f"ledger row of {u.participant} does not match its signed envelope")
            try:
                verify(u.public_key, u.envelope, u.signature)
            except SignatureError as exc:
                raise CustodianRefusal(f"ledger row of {u.participant} is not signed by its enrolled key") from exc
            if digest not in accepted_hashes:
                raise CustodianRefusal(f"update {digest} of {u.participant} is not recorded as accepted "
                                       "in the audit ledger")
        rebuilt = ckks.sum_encrypted(self._secret, [u.ciphertext for u in updates])
        if hashlib.sha256(rebuilt).digest() != hashlib.sha256(aggregate).digest():
            raise CustodianRefusal("refusing to decrypt: the aggregate is not the sum of the ledger's "
                                   f"accepted updates of {sorted(participants)}")
        return ckks.decrypt(self._secret, aggregate)
