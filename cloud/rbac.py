"""Roles, the one permission table P(role, action), and bearer-token hashing.

Tokens are 256-bit random strings (``secrets.token_urlsafe(32)``); only their SHA-256 is stored, which is
enough for high-entropy secrets (no dictionary to attack, so no slow hash is needed; cf. NIST SP 800-63B
5.1.1.2 on memorised secrets, which these are not). Rules that depend on who did what before (segregation of
duties: the opener of a round may not promote it; promotion needs a compliance approval) are checked in
`cloud.promotion`, on top of this table.

Two-person rules (`TWO_PERSON`, carried out by `cloud.approvals`): creating a user, issuing an enrollment token,
changing a privacy cap, halting or resuming a participant, lifting an intrusion lock and reinstating a region
suspended after a failed audit are requested by one user and take effect only when a different user holding an
approver role approves. So no single person, an admin included, can add a participant or a staff identity they
control, silence a participant's privacy limit, or free what intrusion response or an audit contained, alone.
"""

from __future__ import annotations

import hashlib
import secrets

# monitor: a metrics scraper's identity (Prometheus); it may read /metrics and nothing else
ROLES = ("admin", "data_scientist", "compliance_officer", "operator", "auditor", "participant", "monitor")
STAFF = frozenset({"admin", "data_scientist", "compliance_officer", "operator", "auditor"})  # people, not machines

# action -> roles allowed. Participants authenticate by Ed25519 signature or enrollment token, not bearer.
PERMISSIONS: dict[str, frozenset[str]] = {
    "user.create": frozenset({"admin"}),
    "user.list": frozenset({"admin"}),
    "whoami": frozenset(ROLES),
    "enrollment_token.issue": frozenset({"admin"}),
    "participant.list": frozenset({"admin", "operator", "compliance_officer", "auditor"}),
    "participant.configure": frozenset({"admin", "compliance_officer"}),
    "participant.halt": frozenset({"admin", "compliance_officer"}),
    "approval.read": frozenset({"admin", "compliance_officer", "auditor"}),
    "approval.decide": frozenset({"admin", "compliance_officer"}),
    "round.open": frozenset({"admin", "operator", "data_scientist"}),
    "round.read": frozenset({"admin", "operator", "data_scientist", "compliance_officer", "auditor"}),
    "round.evaluate": frozenset({"data_scientist"}),
    "round.approve": frozenset({"compliance_officer"}),
    "round.reject": frozenset({"compliance_officer", "data_scientist"}),
    "model.promote": frozenset({"admin", "operator"}),
    "model.rollback": frozenset({"admin", "operator"}),
    # attributions of a version's forecasts on the synthetic validation cohort (cloud/explainer.py): for the people
    # who judge a model, not for those who run the machinery or scrape it
    "model.explain": frozenset({"data_scientist", "compliance_officer", "auditor"}),
    "audit.read": frozenset({"auditor", "compliance_officer"}),
    "privacy.read": frozenset({"auditor", "compliance_officer"}),
    "alerts.read": frozenset({"auditor", "compliance_officer"}),
    "intrusion.read": frozenset({"auditor", "compliance_officer"}),  # locks, quarantine (cloud/intrusion.py)
    "intrusion.lift": frozenset({"compliance_officer"}),
    # region relays (cloud/regions.py): the staff list, and a request to lift a suspension after a failed audit
    "region.read": frozenset({"admin", "operator", "compliance_officer", "auditor"}),
    "region.reinstate": frozenset({"admin", "compliance_officer"}),
    "custodian.unseal": frozenset({"admin", "compliance_officer"}),
    # the dashboard (cloud/api/dashboard.py): its page is public, its data comes from the routes above; these are
    # its own routes: who I am and what I may do, the change feed (filtered per role), verifying the ledger
    "dashboard.read": STAFF,
    "audit.verify": frozenset({"auditor", "compliance_officer"}),
    "metrics.read": frozenset({"admin", "operator", "monitor"}),
    # by signature / enrollment token, listed so the table is complete
    "participant.enroll": frozenset({"participant"}),
    "update.submit": frozenset({"participant"}),
    "refusal.submit": frozenset({"participant"}),
    "intrusion.report": frozenset({"participant"}),  # a node's report of a containment it carried out
    "witness.acknowledge": frozenset({"participant"}),  # a node's signed check of a log checkpoint
}


# action -> roles that may approve it (the requester needs the action's own permission above; approver != requester)
TWO_PERSON: dict[str, frozenset[str]] = {
    "user.create": frozenset({"compliance_officer"}),
    "enrollment_token.issue": frozenset({"compliance_officer"}),
    "participant.configure": frozenset({"admin", "compliance_officer"}),
    "participant.halt": frozenset({"admin", "compliance_officer"}),
    "participant.resume": frozenset({"admin", "compliance_officer"}),
    "intrusion.lift": frozenset({"admin", "compliance_officer"}),  # requested by a compliance officer only
    "region.reinstate": frozenset({"compliance_officer"}),  # a suspended region's aggregates are taken again
}


def allowed(role: str, action: str) -> bool:
    """P(role, action); unknown actions are denied."""
    return role in PERMISSIONS.get(action, frozenset())


def new_token(prefix: str = "wf") -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
