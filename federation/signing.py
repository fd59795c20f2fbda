"""Ed25519 signing of canonical JSON documents (submissions, enrollment), with a domain-separation prefix."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from federation.errors import SignatureError

UPDATE_DOMAIN = b"wearfed/update/v1\n"
REFUSAL_DOMAIN = b"wearfed/refusal/v1\n"


def canonical_json(doc: dict) -> bytes:
    """Deterministic JSON bytes: sorted keys, no whitespace, UTF-8."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, *, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except Exception as exc:
        raise SignatureError(f"{what} is not valid base64") from exc


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """Load a node's PEM private key, creating it (mode 0600) on first start."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise SignatureError(f"{path} is not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pem)
    tmp.chmod(0o600)
    tmp.replace(path)
    return key


def public_key_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return b64(raw)


def sign(key: Ed25519PrivateKey, doc: dict, *, domain: bytes = UPDATE_DOMAIN) -> str:
    return b64(key.sign(domain + canonical_json(doc)))


def verify(public_key: str, doc: dict, signature: str, *, domain: bytes = UPDATE_DOMAIN) -> None:
    """Raise SignatureError unless `signature` is the key's signature over the canonical document."""
    raw = unb64(public_key, what="public key")
    try:
        pub = Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise SignatureError(f"public key is not 32 raw Ed25519 bytes (got {len(raw)})") from exc
    try:
        pub.verify(unb64(signature, what="signature"), domain + canonical_json(doc))
    except InvalidSignature as exc:
        raise SignatureError("signature does not verify against the enrolled key") from exc
