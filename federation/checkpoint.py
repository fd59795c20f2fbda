"""Ed25519-signed checkpoints (tree heads) of the audit ledger, in the C2SP tlog-checkpoint text format.

A checkpoint body is three newline-terminated lines (c2sp.org/tlog-checkpoint; the same fields as the signed
tree head of RFC 6962 section 3.5, minus the timestamp): the origin (the log's identity), the tree size in
decimal, and the RFC 9162 section 2.1.1 root hash in standard base64. The signature is Ed25519 over exactly
those body bytes, as in a C2SP signed note, so the log's checkpoint key must sign nothing else.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from federation.errors import SchemaError
from federation.merkle import HASH_SIZE, VerificationError

SIGNATURE_ALGORITHM = "Ed25519"
SIGNATURE_SIZE = 64
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


@dataclass(frozen=True)
class Checkpoint:
    """A signed-tree-head body: ``origin`` names the log, ``root_hash`` is its root at ``tree_size`` leaves.

    The origin must be non-empty, with no whitespace and no ``+`` (C2SP note-name rules), so the body
    cannot be reframed; violations raise :class:`~federation.errors.SchemaError`.
    """

    origin: str
    tree_size: int
    root_hash: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not self.origin:
            raise SchemaError("checkpoint origin must be a non-empty string")
        if any(c.isspace() or c == "+" for c in self.origin):
            raise SchemaError(f"checkpoint origin {self.origin!r} must not contain whitespace or '+'")
        if isinstance(self.tree_size, bool) or not isinstance(self.tree_size, int) or self.tree_size < 0:
            raise SchemaError(f"checkpoint tree_size must be a non-negative int, got {self.tree_size!r}")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != HASH_SIZE:
            raise SchemaError(f"checkpoint root_hash must be {HASH_SIZE} bytes")

    def body(self) -> bytes:
        """The signed text: ``origin\\nsize\\nbase64(root)\\n`` (UTF-8)."""
        root = base64.b64encode(self.root_hash).decode("ascii")
        return f"{self.origin}\n{self.tree_size}\n{root}\n".encode()

    @classmethod
    def from_body(cls, body: bytes) -> Checkpoint:
        """Parse a body produced by :meth:`body`, strictly (extension lines are not accepted)."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SchemaError("checkpoint body is not UTF-8") from exc
        lines = text.split("\n")
        if len(lines) != 4 or lines[3] != "":
            raise SchemaError("checkpoint body must be exactly three newline-terminated lines")
        origin, size, root = lines[:3]
        if not _DECIMAL.fullmatch(size):
            raise SchemaError(f"checkpoint tree size {size!r} is not a canonical decimal")
        try:
            root_hash = base64.b64decode(root, validate=True)
        except binascii.Error as exc:
            raise SchemaError("checkpoint root hash is not valid base64") from exc
        checkpoint = cls(origin=origin, tree_size=int(size), root_hash=root_hash)
        if checkpoint.body() != body:
            raise SchemaError("checkpoint body is not in canonical form")
        return checkpoint


def sign_checkpoint(cp: Checkpoint, key: Ed25519PrivateKey) -> bytes:
    """Ed25519 signature (64 bytes) over ``cp.body()``."""
    return key.sign(cp.body())


def verify_checkpoint(cp: Checkpoint, signature: bytes, public_key: Ed25519PublicKey) -> None:
    """Check that ``signature`` is ``public_key``'s Ed25519 signature over ``cp.body()``.

    Returns ``None``; raises :class:`~federation.merkle.VerificationError` naming the checkpoint and key.
    """
    if not isinstance(public_key, Ed25519PublicKey):
        raise VerificationError(f"checkpoint key must be an {SIGNATURE_ALGORITHM} public key")
    if not isinstance(signature, bytes | bytearray) or len(signature) != SIGNATURE_SIZE:
        size = len(signature) if isinstance(signature, bytes | bytearray) else type(signature).__name__
        raise VerificationError(f"checkpoint signature must be {SIGNATURE_SIZE} bytes, got {size}")
    try:
        public_key.verify(bytes(signature), cp.body())
    except InvalidSignature as exc:
        key_hex = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
        raise VerificationError(
            f"{SIGNATURE_ALGORITHM} signature does not verify for checkpoint "
            f"(origin {cp.origin!r}, size {cp.tree_size}, root {cp.root_hash.hex()}) under key {key_hex}"
        ) from exc
