"""Consent withdrawal records (device -> gateway) and pseudonyms of withdrawn subjects.

A withdrawal is a small JSON document the device signs with its consent key (Ed25519, provisioned with its broker
login by `wearfed provision`; the gateway holds only the public half)::

    {"record": {"v": 1, "kind": "withdrawal", "gateway": <gw>, "device": <id>, "issued_at": <unix s>,
                "nonce": <16 random bytes, base64>},
     "sig": <Ed25519 over WITHDRAWAL_DOMAIN || canonical_json(record), base64>}

It travels on the device's own topic ``wearfed/v1/<gw>/<device>/consent`` (`federation.telemetry.consent_topic`,
QoS 1). `verify_withdrawal` returns None or raises `ConsentError` with what was expected and what was found:
wrong key, tampered bytes, another gateway, a record of another device (a replay on the wrong topic), an
issue time outside [now - MAX_AGE_S, now + MAX_SKEW_S]. A replay of the same device's record is harmless: a
withdrawal is terminal, and the gateway answers a second one with "already withdrawn".

After the purge the gateway keeps only `pseudonym(secret, id)`, an HMAC-SHA256 (RFC 2104) of the id under a
gateway-local secret: enough to refuse the device's later data, not enough to name it without the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.errors import SchemaError, SignatureError
from federation.signing import b64, sign, unb64, verify

WITHDRAWAL_DOMAIN = b"wearfed/consent-withdrawal/v1\n"
REPORT_DOMAIN = b"wearfed/consent-report/v1\n"  # a participant's report to the cloud (cloud/consent.py)
VERSION = 1
MAX_AGE_S = 7 * 86400.0  # an older withdrawal is refused: it was held back, or is being replayed from a capture
MAX_SKEW_S = 300.0  # clock skew tolerated ahead of the gateway (the request-signature window, request_auth)
MAX_BYTES = 2048
IRREVERSIBLE = ("Contributions this subject's data made to model updates already trained and aggregated (and to the "
                "model versions built from them) cannot be removed: those models are not retrained. The privacy "
                "already spent on this subject stays spent. Only stored data is deleted and no later round uses it.")


class ConsentError(SchemaError):
    """A withdrawal record is malformed, unsigned, mis-signed, mis-addressed or stale; nothing was deleted."""


@dataclass(frozen=True)
class Withdrawal:
    gateway: str
    device: str
    issued_at: int
    nonce: str

    def doc(self) -> dict:
        return {"v": VERSION, "kind": "withdrawal", "gateway": self.gateway, "device": self.device,
                "issued_at": self.issued_at, "nonce": self.nonce}


def new_withdrawal(key: Ed25519PrivateKey, *, gateway: str, device: str, now: float | None = None) -> bytes:
    """The signed message a device publishes to withdraw its consent (a fresh nonce each time)."""
    w = Withdrawal(gateway=gateway, device=device, issued_at=int(time.time() if now is None else now),
                   nonce=b64(secrets.token_bytes(16)))
    doc = w.doc()
    return json.dumps({"record": doc, "sig": sign(key, doc, domain=WITHDRAWAL_DOMAIN)}).encode()


def parse_withdrawal(payload: bytes) -> tuple[Withdrawal, dict, str]:
    """The record, its signed document and signature; ConsentError naming the field that is wrong."""
    if len(payload) > MAX_BYTES:
        raise ConsentError(f"withdrawal of {len(payload)} bytes exceeds {MAX_BYTES}")
    try:
        msg = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConsentError(f"withdrawal is not JSON: {exc}") from exc
    if not isinstance(msg, dict) or set(msg) != {"record", "sig"}:
        raise ConsentError("withdrawal must be an object with exactly 'record' and 'sig'")
    doc, sig = msg["record"], msg["sig"]
    keys = {"v", "kind", "gateway", "device", "issued_at", "nonce"}
    if not isinstance(doc, dict) or set(doc) != keys:
        raise ConsentError(f"withdrawal record must have exactly the fields {sorted(keys)}")
    if doc["v"] != VERSION or doc["kind"] != "withdrawal":
        raise ConsentError(f"withdrawal record v={doc['v']!r} kind={doc['kind']!r}: expected v=1 kind=withdrawal")
    for field in ("gateway", "device", "nonce"):
        if not isinstance(doc[field], str) or not 0 < len(doc[field]) <= 64:
            raise ConsentError(f"withdrawal record field {field!r} must be a string of 1-64 characters")
    if not isinstance(doc["issued_at"], int) or isinstance(doc["issued_at"], bool) or doc["issued_at"] < 0:
        raise ConsentError("withdrawal record field 'issued_at' must be a non-negative integer (unix seconds)")
    if not isinstance(sig, str) or len(sig) > 200:
        raise ConsentError("withdrawal field 'sig' must be a base64 string")
    return Withdrawal(doc["gateway"], doc["device"], doc["issued_at"], doc["nonce"]), doc, sig


def verify_withdrawal(payload: bytes, *, public_key: str, gateway: str, device: str, now: float | None = None
                      ) -> Withdrawal:
    """The withdrawal in `payload` if it is `device`'s, for `gateway`, fresh and signed by `public_key`."""
    w, doc, sig = parse_withdrawal(payload)
    if w.gateway != gateway:
        raise ConsentError(f"withdrawal addressed to gateway {w.gateway!r}, expected {gateway!r}")
    if w.device != device:
        raise ConsentError(f"withdrawal of device {w.device!r} arrived on the topic of another device")
    try:
        verify(public_key, doc, sig, domain=WITHDRAWAL_DOMAIN)
    except SignatureError as exc:
        raise ConsentError(f"withdrawal signature does not verify against the device's consent key: {exc}") from exc
    now = time.time() if now is None else now
    if not now - MAX_AGE_S <= w.issued_at <= now + MAX_SKEW_S:
        raise ConsentError(f"withdrawal issued at {w.issued_at}, outside [{now - MAX_AGE_S:.0f}, "
                           f"{now + MAX_SKEW_S:.0f}] (stale or replayed)")
    return w


def pseudonym(secret: bytes, subject: str) -> str:
    """HMAC-SHA256(secret, subject), 128 bits in hex: a withdrawn subject's tombstone and its name at the cloud."""
    return hmac.new(secret, subject.encode(), hashlib.sha256).hexdigest()[:32]


def consent_key_pair() -> tuple[str, str]:
    """A new consent key: (private seed, public key), both base64 of the raw 32 bytes (provisioning)."""
    from cryptography.hazmat.primitives import serialization

    k = Ed25519PrivateKey.generate()
    raw = k.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pub = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return b64(raw), b64(pub)


def consent_key(seed_b64: str) -> Ed25519PrivateKey:
    """The device's consent key from its provisioned base64 seed (SignatureError if it is not one)."""
    raw = unb64(seed_b64, what="consent key")
    if len(raw) != 32:
        raise SignatureError(f"consent key must be 32 bytes, got {len(raw)}")
    return Ed25519PrivateKey.from_private_bytes(raw)

