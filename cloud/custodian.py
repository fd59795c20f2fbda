"""Key custodian: holds the CKKS secret context and decrypts only aggregates the ledger backs.

Two named constructors, never a flag: `Custodian.from_shares` opens the sealed secret context with k of the
n Shamir shares (`cloud.custody`); `Custodian.dev_unsealed` is the demo's INSECURE mode, where the secret key
sits unsealed on the aggregator's host.

`decrypt_aggregate` does not trust the aggregate it is handed: it checks every ledger row (Ed25519 signature
over the envelope with the participant's enrolled key, ciphertext hash, one row per distinct participant), that
each row, the participant's key, and the round's contributors and quorum are what the audit log committed, proven by
inclusion in a checkpoint signed by the log key (`cloud.inclusion`), rebuilds the homomorphic sum from the stored
ciphertexts itself, and decrypts only if that sum is byte-identical to the requested aggregate.

With region relays (`federation.region`) a contributor's ciphertext is not stored: its region's aggregate is. The
custodian then checks the region's signed statement (enrolled key, this round, the aggregate's hash, exactly the
region's ledger rows, each with the ciphertext hash its participant signed) and sums the region aggregates with the
direct ciphertexts. That a region aggregate is the sum of its listed inputs it cannot check: the aggregator audits a
share of them (`cloud.regions`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cloud import custody, inclusion
from federation import ckks, region
from federation.errors import SignatureError, WearfedError
from federation.limits import MIN_CONTRIBUTORS_FLOOR
from federation.signing import verify

INSECURE_LABEL = "INSECURE DEV MODE: key custodian auto-unsealed; the secret key is on this host"
log = logging.getLogger(__name__)


class CustodianRefusal(WearfedError):
    """The custodian declined to decrypt (not a quorum aggregate the ledger backs)."""


@dataclass(frozen=True)
class LedgerUpdate:
    """One accepted update as the ledger holds it."""

    participant: str
    public_key: str
    envelope: dict
    signature: str
    ciphertext: bytes  # b"" when a region's aggregate carries it
    region: str | None = None


@dataclass(frozen=True)
class LedgerRegionSum:
    """One accepted region aggregate as the ledger holds it."""

    region: str
    public_key: str
    statement: dict
    signature: str
    aggregate: bytes


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

    def decrypt_aggregate(self, aggregate: bytes, *, updates: Sequence[LedgerUpdate], quorum: int, round_id: int,
                          evidence: inclusion.Evidence, log_key: str,
                          region_sums: Sequence[LedgerRegionSum] = ()) -> np.ndarray:
        """Decrypt `aggregate` only if it is the sum of >= quorum distinct, signed updates (direct, or in signed region
        aggregates) that the audit log (signed by `log_key`, base64 Ed25519) committed, as `evidence` proves."""
        need = max(quorum, MIN_CONTRIBUTORS_FLOOR)
        participants = [u.participant for u in updates]
        if len(set(participants)) != len(participants):
            raise CustodianRefusal(f"contributors are not distinct: {sorted(participants)}")
        if len(participants) < need:
            raise CustodianRefusal(f"refusing to decrypt: aggregate of {len(participants)} participant(s), "
                                   f"quorum is {need}")
        for u in updates:
            if u.region is None:  # its own ciphertext is summed: it must be the one its participant signed
                matches = u.envelope.get("ciphertext_sha256") == hashlib.sha256(u.ciphertext).hexdigest()
            else:  # its region's aggregate carries it: the participant must have chosen that region
                matches = u.envelope.get("region") == u.region and not u.ciphertext
            if u.envelope.get("participant") != u.participant or not matches:
                raise CustodianRefusal(f"ledger row of {u.participant} does not match its signed envelope")
            try:
                verify(u.public_key, u.envelope, u.signature)
            except SignatureError as exc:
                raise CustodianRefusal(f"ledger row of {u.participant} is not signed by its enrolled key") from exc
        self._check_region_sums(round_id, updates, region_sums)
        try:
            inclusion.verify(evidence, log_key=log_key, round_id=round_id, quorum=quorum, contributions=updates,
                             region_sums=region_sums)
        except inclusion.NotInLog as exc:
            raise CustodianRefusal(f"refusing to decrypt: {exc}") from exc
        summands = [u.ciphertext for u in updates if u.region is None] + [g.aggregate for g in region_sums]
        rebuilt = ckks.sum_encrypted(self._secret, summands)
        if hashlib.sha256(rebuilt).digest() != hashlib.sha256(aggregate).digest():
            raise CustodianRefusal("refusing to decrypt: the aggregate is not the sum of the ledger's "
                                   f"accepted updates of {sorted(participants)}")
        return ckks.decrypt(self._secret, aggregate)

    @staticmethod
    def _check_region_sums(round_id: int, updates: Sequence[LedgerUpdate], sums: Sequence[LedgerRegionSum]) -> None:
        """Every region-carried row is listed by exactly one signed statement of its region, and every statement
        lists only such rows, with the ciphertext hash each participant signed."""
        carried = {u.participant: u for u in updates if u.region is not None}
        listed: set[str] = set()
        for g in sums:
            doc = g.statement
            try:
                region.verify_statement(g.public_key, doc, g.signature)
            except SignatureError as exc:
                raise CustodianRefusal(f"region {g.region}'s statement is not signed by its enrolled key") from exc
            if doc.get("round") != round_id or doc.get("region") != g.region \
                    or doc.get("aggregate_sha256") != hashlib.sha256(g.aggregate).hexdigest():
                raise CustodianRefusal(f"region {g.region}'s statement is not about this round's aggregate of it")
            names = set(doc.get("contributors") or {})
            if names & listed:
                raise CustodianRefusal(f"participants {sorted(names & listed)} are in two region aggregates")
            listed |= names
            try:
                region.check_members(doc, {p: carried[p].envelope for p in names if p in carried})
            except region.RegionError as exc:
                raise CustodianRefusal(f"refusing to decrypt: {exc}") from exc
            if any(carried[p].region != g.region for p in names):
                raise CustodianRefusal(f"region {g.region}'s statement lists rows of another region")
        if listed != set(carried):
            raise CustodianRefusal(f"ledger rows {sorted(set(carried) - listed)} name a region whose aggregate is "
                                   "not offered")
