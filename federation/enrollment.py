"""What a participant pins when it enrolls: the federation's CKKS public key (its id and parameters) and the cloud's
identity (audit-log and release keys), so that nobody can later make it encrypt under another key or trust another
log or release signer.

The cloud returns the binding with an HMAC-SHA256 keyed by SHA-256 of the one-time enrollment token (the cloud stores
only that hash; the node knows the token): a network attacker without the token cannot hand a node another binding.
Nodes can also be given the key id out of band (`--ckks-key-id`, from the provisioning papers) and then refuse any
binding with another. On every start and before every encryption the node checks the context the cloud serves
against its pinned binding (`check_context`), and refuses to encrypt under anything else.
"""

from __future__ import annotations

import hashlib
import hmac

import tenseal as ts

from federation.errors import SchemaError, SignatureError
from federation.signing import canonical_json

BINDING_DOMAIN = b"wearfed/enrollment-binding/v1\n"


class ContextMismatch(SchemaError):
    """The CKKS context on offer is not the one this node pinned at enrollment."""


def key_id_of(public_context: bytes) -> str:
    """The federation's key id as nodes pin it: the full SHA-256 of the serialised public context (custody's share
    labels use its first 16 hex digits)."""
    return hashlib.sha256(public_context).hexdigest()


def context_params(ctx: ts.Context) -> dict:
    """The parameters that decide what a CKKS ciphertext under `ctx` can hold."""
    data = ctx.seal_context().data
    return {"scheme": "CKKS", "poly_modulus_degree": int(data.key_context_data().parms().poly_modulus_degree()),
            "coeff_modulus_bits": int(data.key_context_data().total_coeff_modulus_bit_count()),
            "data_modulus_bits": int(data.first_context_data().total_coeff_modulus_bit_count()),
            "global_scale_bits": float(ctx.global_scale).hex()}


def make_binding(*, public_context: bytes, ctx: ts.Context, audit_log_key: str, release_key: str) -> dict:
    return {"ckks_key_id": key_id_of(public_context), "ckks": context_params(ctx),
            "audit_log_key": audit_log_key, "release_key": release_key}


def binding_mac(token_sha256_hex: str, binding: dict) -> str:
    msg = BINDING_DOMAIN + canonical_json(binding)
    return hmac.new(bytes.fromhex(token_sha256_hex), msg, hashlib.sha256).hexdigest()


def verify_binding(token: str, binding: dict, mac: str, *, expected_key_id: str | None = None) -> None:
    """Raise SignatureError unless the cloud that knows this token sent this binding (and the key id is expected)."""
    want = binding_mac(hashlib.sha256(token.encode()).hexdigest(), binding)
    if not hmac.compare_digest(want, mac or ""):
        raise SignatureError("the enrollment answer is not bound to this enrollment token: refusing its CKKS key")
    if expected_key_id is not None and binding.get("ckks_key_id") != expected_key_id:
        raise ContextMismatch(f"the cloud binds CKKS key {binding.get('ckks_key_id')}, provisioning says "
                              f"{expected_key_id}")


def check_context(public_context: bytes, ctx: ts.Context, binding: dict) -> None:
    """Raise ContextMismatch unless the served context is the pinned key with the pinned parameters."""
    found = key_id_of(public_context)
    if found != binding.get("ckks_key_id"):
        raise ContextMismatch(f"the cloud serves CKKS key {found}, this node pinned {binding.get('ckks_key_id')} at "
                              "enrollment: refusing to encrypt under it")
    if ctx.has_secret_key() or context_params(ctx) != binding.get("ckks"):
        raise ContextMismatch("the served CKKS context's parameters differ from the pinned ones (or it carries a "
                              "secret key): refusing to encrypt under it")
