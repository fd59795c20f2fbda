"""Ed25519 signing of canonical JSON documents (submissions, enrollment), with a domain-separation prefix; private key
files (PKCS#8 PEM, optionally encrypted with a passphrase), and `CommandSigner`, a key that lives outside the process
(an HSM or KMS command line, a signing daemon's client) and signs what it is given on stdin."""

from __future__ import annotations

import base64
import json
import shlex
import subprocess
from collections.abc import Sequence
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
        return load_private_key(path)
    key = Ed25519PrivateKey.generate()
    write_private_key(path, key)
    return key


def load_private_key(path: Path, *, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """An Ed25519 PKCS#8 PEM key; encrypted files need `passphrase`. Raises SignatureError naming the file."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=passphrase or None)
    except TypeError as exc:  # encrypted without a passphrase, or a passphrase for a plain file
        raise SignatureError(f"{path}: {exc}") from exc
    except ValueError as exc:  # a wrong passphrase or not a PEM key
        raise SignatureError(f"{path}: cannot load the key (wrong passphrase, or not a PEM private key)") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key")
    return key


def write_private_key(path: Path, key: Ed25519PrivateKey, *, passphrase: bytes | None = None) -> None:
    """Write `key` as PKCS#8 PEM, mode 0600, atomically; encrypted (the library's best available PKCS#8
    encryption) when a passphrase is given."""
    from federation.runtime import atomic_write_bytes

    enc = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    atomic_write_bytes(Path(path), key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     enc), mode=0o600)


class CommandSigner:
    """An Ed25519 key outside this process: `command` gets the message on stdin and prints the base64 signature on
    stdout (exit 0). Its public key is configured (pinned) and every signature is checked against it, so a signer
    that signs with another key, or prints garbage, raises SignatureError instead of corrupting a log."""

    def __init__(self, command: str | Sequence[str], *, public_key: str, timeout_s: float = 10.0) -> None:
        self.command = shlex.split(command) if isinstance(command, str) else list(command)
        if not self.command:
            raise SignatureError("the signer command is empty")
        raw = unb64(public_key, what="signer public key")
        try:
            self._public = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise SignatureError(f"signer public key is not 32 raw Ed25519 bytes (got {len(raw)})") from exc
        self.timeout_s = timeout_s

    def public_key(self) -> Ed25519PublicKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        try:
            out = subprocess.run(self.command, input=data, capture_output=True, timeout=self.timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SignatureError(f"signer {self.command[0]} failed: {exc}") from exc
        if out.returncode != 0:
            raise SignatureError(f"signer {self.command[0]} exited {out.returncode}: "
                                 f"{out.stderr.decode(errors='replace')[-300:]}")
        sig = unb64(out.stdout.decode(errors="replace").strip(), what="signer output")
        try:
            self._public.verify(sig, data)
        except InvalidSignature as exc:
            raise SignatureError(f"signer {self.command[0]} returned a signature that does not verify under its "
                                 "configured public key") from exc
        return sig


def public_key_b64(key: Ed25519PrivateKey | CommandSigner) -> str:
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
