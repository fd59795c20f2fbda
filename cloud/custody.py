"""Key custody on disk: the CKKS secret context sealed with AES-256-GCM under a data key split k-of-n (Shamir).

`init_keys` creates the federation's context (`federation.ckks.new_secret_context`), publishes the public
context, seals the serialised secret context, and returns one share per custodian (shown once, never stored).
Shamir's scheme (Shamir 1979) is pycryptodome's `Crypto.Protocol.SecretSharing.Shamir`, which works over
GF(2^128) and splits 16-byte secrets: the 256-bit data key is split as two 16-byte halves with the same
indices, so each custodian's share carries both halves. A share is ``wfshare1-<key id>-<index>-<hex>-<check>``:
the key id (SHA-256 of the public context) binds it to one key set, the check (SHA-256 prefix) catches typos.
The AEAD associated data binds the sealed blob to the key id and the k-of-n parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from federation import ckks
from federation.errors import WearfedError

SHARE_PREFIX = "wfshare1"
MIN_CUSTODY_THRESHOLD = 2
AEAD = "AES-256-GCM"
PUBLIC_CONTEXT_FILE = "public-context.bin"
SEALED_FILE = "sealed-secret-context.json"


class CustodyError(WearfedError):
    """Key custody failed: bad share, wrong key set, not enough shares, or a sealed blob that does not open."""


@dataclass(frozen=True)
class Sealed:
    key_id: str
    threshold: int
    custodians: int
    nonce: bytes
    ciphertext: bytes

    def aad(self) -> bytes:
        return f"wearfed/custody/v1|{self.key_id}|{self.threshold}-of-{self.custodians}|{AEAD}".encode()

    def to_json(self) -> str:
        return json.dumps({"key_id": self.key_id, "threshold": self.threshold, "custodians": self.custodians,
                           "aead": AEAD, "nonce": self.nonce.hex(), "ciphertext": self.ciphertext.hex()})

    @classmethod
    def from_json(cls, text: str) -> Sealed:
        try:
            d = json.loads(text)
            if d["aead"] != AEAD:
                raise ValueError(f"unknown AEAD {d['aead']}")
            return cls(key_id=d["key_id"], threshold=int(d["threshold"]), custodians=int(d["custodians"]),
                       nonce=bytes.fromhex(d["nonce"]), ciphertext=bytes.fromhex(d["ciphertext"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise CustodyError(f"sealed secret context is malformed: {exc}") from exc


def key_id_of(public_context: bytes) -> str:
    return hashlib.sha256(public_context).hexdigest()[:16]


def custody_dir(state_dir: Path) -> Path:
    return state_dir / "custody"


def _check(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()[:8]


def format_share(key_id: str, index: int, value: bytes) -> str:
    body = f"{SHARE_PREFIX}-{key_id}-{index}-{value.hex()}"
    return f"{body}-{_check(body)}"


def parse_share(text: str, *, key_id: str) -> tuple[int, bytes]:
    """(index, 32 share bytes) of a share string for key set `key_id`; raises CustodyError otherwise."""
    parts = text.strip().split("-")
    if len(parts) != 5 or parts[0] != SHARE_PREFIX:
        raise CustodyError(f"not a {SHARE_PREFIX} share")
    body = "-".join(parts[:4])
    if _check(body) != parts[4]:
        raise CustodyError("share checksum does not match (mistyped?)")
    if parts[1] != key_id:
        raise CustodyError(f"share is for key set {parts[1]}, this server's key set is {key_id}")
    try:
        index, value = int(parts[2]), bytes.fromhex(parts[3])
    except ValueError as exc:
        raise CustodyError("share index or value is malformed") from exc
    if not 1 <= index <= 255 or len(value) != 32:
        raise CustodyError("share index or value is out of range")
    return index, value


def init_keys(state_dir: Path, *, custodians: int, threshold: int) -> list[str]:
    """Create, publish and seal the federation's CKKS keys; return the n shares (print them once)."""
    if not MIN_CUSTODY_THRESHOLD <= threshold <= custodians <= 255:
        raise CustodyError(f"need {MIN_CUSTODY_THRESHOLD} <= threshold <= custodians <= 255 (no one custodian may "
                           f"unseal alone), got {threshold} of {custodians}")
    d = custody_dir(state_dir)
    if (d / SEALED_FILE).exists():
        raise CustodyError(f"{d / SEALED_FILE} exists: refusing to replace the federation's keys")
    ctx = ckks.new_secret_context()
    public = ckks.public_bytes(ctx)
    secret = ckks.serialize_secret(ctx)
    data_key = os.urandom(32)
    sealed = Sealed(key_id=key_id_of(public), threshold=threshold, custodians=custodians, nonce=os.urandom(12),
                    ciphertext=b"")
    sealed = Sealed(**{**sealed.__dict__, "ciphertext": AESGCM(data_key).encrypt(sealed.nonce, secret, sealed.aad())})
    low = Shamir.split(threshold, custodians, data_key[:16])
    high = Shamir.split(threshold, custodians, data_key[16:])
    shares = [format_share(sealed.key_id, i, a + b) for (i, a), (j, b) in zip(low, high, strict=True) if i == j]
    d.mkdir(parents=True, exist_ok=True)
    _write(d / PUBLIC_CONTEXT_FILE, public)
    _write(d / SEALED_FILE, sealed.to_json().encode())
    return shares


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o600)
    tmp.replace(path)


def load_public(state_dir: Path) -> bytes:
    path = custody_dir(state_dir) / PUBLIC_CONTEXT_FILE
    if not path.exists():
        raise CustodyError(f"no published public context at {path}: run `wearfed cloud init-keys` first")
    return path.read_bytes()


def load_sealed(state_dir: Path) -> Sealed:
    path = custody_dir(state_dir) / SEALED_FILE
    if not path.exists():
        raise CustodyError(f"no sealed secret context at {path}: run `wearfed cloud init-keys` first")
    return Sealed.from_json(path.read_text())


def unseal(sealed: Sealed, shares: Sequence[str]) -> bytes:
    """Reconstruct the data key from >= threshold distinct shares and open the sealed secret context."""
    parsed = dict(parse_share(s, key_id=sealed.key_id) for s in shares)
    if len(parsed) < sealed.threshold:
        raise CustodyError(f"{len(parsed)} distinct share(s) given, {sealed.threshold} needed")
    chosen = sorted(parsed.items())[: sealed.threshold]
    low = Shamir.combine([(i, v[:16]) for i, v in chosen])
    high = Shamir.combine([(i, v[16:]) for i, v in chosen])
    try:
        return AESGCM(low + high).decrypt(sealed.nonce, sealed.ciphertext, sealed.aad())
    except InvalidTag as exc:
        raise CustodyError("the shares do not reconstruct the data key (wrong or corrupted share)") from exc
