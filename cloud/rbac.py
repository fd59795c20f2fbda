"""Roles, the one permission table P(role, action), and bearer-token hashing.

Tokens are 256-bit random strings (``secrets.token_urlsafe(32)``); only their SHA-256 is stored, which is
enough for high-entropy secrets (no dictionary to attack, so no slow hash is needed; cf. NIST SP 800-63B
5.1.1.2 on memorised secrets, which these are not). Rules that depend on who did what before (segregation of
duties: the opener of a round may not promote it; promotion needs a compliance approval) are checked in
`cloud.service`, on top of this table.
"""

from __future__ import annotations

import hashlib
import secrets

ROLES = ("admin", "data_scientist", "compliance_officer", "operator", "auditor", "participant")

# action -> roles allowed. Participants authenticate by Ed25519 signature or enrollment token, not bearer.
PERMISSIONS: dict[str, frozenset[str]] = {
    "user.create": frozenset({"admin"}),
    "user.list": frozenset({"admin"}),
    "whoami": frozenset(ROLES),
    "enrollment_token.issue": frozenset({"admin"}),
    "participant.list": frozenset({"admin", "operator", "compliance_officer", "auditor"}),
    "participant.configure": frozenset({"admin", "compliance_officer"}),
    "round.open": frozenset({"admin", "operator", "data_scientist"}),
    "round.read": frozenset({"admin", "operator", "data_scientist", "compliance_officer", "auditor"}),
    "round.evaluate": frozenset({"data_scientist"}),
    "round.approve": frozenset({"compliance_officer"}),
    "round.reject": frozenset({"compliance_officer", "data_scientist"}),
    "model.promote": frozenset({"admin", "operator"}),
    "model.rollback": frozenset({"admin", "operator"}),
    "audit.read": frozenset({"auditor", "compliance_officer"}),
    "privacy.read": frozenset({"auditor", "compliance_officer"}),
    "alerts.read": frozenset({"auditor", "compliance_officer"}),
    "custodian.unseal": frozenset({"admin", "compliance_officer"}),
    # by signature / enrollment token, listed so the table is complete
    "participant.enroll": frozenset({"participant"}),
    "update.submit": frozenset({"participant"}),
    "refusal.submit": frozenset({"participant"}),
}


def allowed(role: str, action: str) -> bool:
    """P(role, action); unknown actions are denied."""
    return role in PERMISSIONS.get(action, frozenset())


def new_token(prefix: str = "wf") -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
