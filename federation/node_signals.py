"""What nodes tell the cloud's intrusion response, signed with their enrolled Ed25519 key over the canonical body:

- an intrusion report (``POST /v1/intrusion/reports``, domain `INTRUSION_REPORT_DOMAIN`): a gateway contained
  something it saw beside its broker (`gateway.acl_watch`: a burst of ACL denials by one device), with counts and
  what it did;
- a witness acknowledgement (``POST /v1/log/witness``, domain `WITNESS_DOMAIN`): the node verified the cloud's
  signed checkpoint of `tree_size` entries with root `root` (`gateway.witness`), so the cloud knows when each node
  last checked its log (`cloud.witnesses`).

The signature covers the body (a signed request header, `federation.request_auth`, covers only method, path and
query).
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.signing import sign

INTRUSION_REPORT_DOMAIN = b"wearfed/intrusion-report/v1\n"
WITNESS_DOMAIN = b"wearfed/witness-ack/v1\n"


def signed(key: Ed25519PrivateKey, body: dict, domain: bytes) -> dict:
    """`body` (which names the participant) with its signature under `domain`."""
    return {**body, "signature": sign(key, body, domain=domain)}
