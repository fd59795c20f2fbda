"""POST /v1/consent/reports on the real server: signed by the enrolled participant, idempotent by report id, audited
with counts only; forged, tampered, unenrolled, replayed-with-other-content and malformed reports are refused. The
model card states what a withdrawal cannot undo."""

from __future__ import annotations

import json
import secrets
import time

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from cloud.audit import StateTampered, verify_ledger, verify_state
from federation.consent import IRREVERSIBLE
from gateway.consent import signed_report
from tests.cloud.participants import ADMIN, FakeNode


def withdrawal(**over: object) -> dict:
    return {"report_id": secrets.token_hex(16), "kind": "withdrawal", "at": time.time(), "subject": "ab" * 16,
            "subject_kind": "device", "issued_at": int(time.time()), "deleted": {"readings": 60,
            "quarantined_messages": 1}, "irreversible": IRREVERSIBLE, **over}


def kinds(cloud, kind: str) -> list[dict]:  # noqa: ANN001
    return [e for e in cloud.audit_entries() if e["kind"] == kind]


def test_signed_report_is_audited_once(http: httpx.Client, cloud) -> None:  # noqa: ANN001
    node = FakeNode(http, "gw-1")
    assert node.enroll().status_code == 201
    body = signed_report(node.key, "gw-1", withdrawal())
    r = http.post("/v1/consent/reports", json=body)
    assert r.status_code == 200 and r.json()["status"] == "recorded"
    assert http.post("/v1/consent/reports", json=body).json()["status"] == "duplicate"  # a resend counts once
    (entry,) = kinds(cloud, "consent.withdrawal")
    assert entry["actor"] == "gw-1" and entry["detail"]["deleted"] == {"readings": 60, "quarantined_messages": 1}
    assert entry["detail"]["irreversible"] == IRREVERSIBLE and entry["detail"]["subject"] == "ab" * 16
    retention = signed_report(node.key, "gw-1", {"report_id": secrets.token_hex(16), "kind": "retention",
                                                 "at": time.time(), "period_days": 30.0,
                                                 "deleted": {"readings": 5, "quarantined_messages": 0}})
    assert http.post("/v1/consent/reports", json=retention).json()["status"] == "recorded"
    assert kinds(cloud, "retention.deleted")[0]["detail"]["period_days"] == 30.0
    assert http.get("/v1/consent", headers=ADMIN).json() == {"withdrawals": {"device": 1, "patient": 0},
                                                             "retention_reports": 1}
    card = http.get("/v1/models/0/card", headers=ADMIN)
    if card.status_code == 404:
        card = http.get("/v1/models/1/card", headers=ADMIN)
    assert card.status_code == 200
    consent = card.json()["consent"]
    assert consent["withdrawals_recorded_to_date"]["device"] == 1 and "cannot be removed" in consent["statement"]
    md = http.get(card.request.url.path, params={"format": "md"}, headers=ADMIN).text
    assert "## Consent withdrawal" in md and "cannot be removed" in md
    # the consent table is bound to the log: `wearfed audit verify` re-derives it, and names a row changed behind it
    sessions = cloud.units.store.sessions
    verify_ledger(sessions)
    with sessions.begin() as s:
        s.execute(text("UPDATE consent_reports SET deleted = :d WHERE kind = 'withdrawal'"),
                  {"d": json.dumps({"readings": 0, "quarantined_messages": 0})})
    with pytest.raises(StateTampered, match="consent_reports"):
        verify_state(sessions)


@pytest.mark.parametrize("attack", ["wrong key", "tampered", "unenrolled", "other content", "bad counts",
                                    "no subject", "extra field"])
def test_bad_reports_are_refused(http: httpx.Client, cloud, attack: str) -> None:  # noqa: ANN001
    node = FakeNode(http, "gw-1")
    assert node.enroll().status_code == 201
    body = signed_report(node.key, "gw-1", withdrawal())
    expected = {"wrong key": 401, "tampered": 401, "unenrolled": 403, "other content": 409, "bad counts": 400,
                "no subject": 400, "extra field": 422}[attack]
    if attack == "wrong key":
        body = signed_report(Ed25519PrivateKey.generate(), "gw-1", withdrawal())
    elif attack == "tampered":
        body["deleted"]["readings"] = 0  # hide how much was deleted
    elif attack == "unenrolled":
        body = signed_report(node.key, "gw-9", withdrawal())
    elif attack == "other content":
        assert http.post("/v1/consent/reports", json=body).status_code == 200
        body = signed_report(node.key, "gw-1", withdrawal(report_id=body["report_id"],
                                                          deleted={"readings": 1, "quarantined_messages": 0}))
    elif attack == "bad counts":
        body = signed_report(node.key, "gw-1", withdrawal(deleted={"readings": -1}))
    elif attack == "no subject":
        doc = withdrawal()
        del doc["subject"]
        body = signed_report(node.key, "gw-1", doc)
    else:
        body = signed_report(node.key, "gw-1", withdrawal(device_id="gw-1-dev001"))
    r = http.post("/v1/consent/reports", json=body)
    assert r.status_code == expected, r.text
    assert len(kinds(cloud, "consent.withdrawal")) == (1 if attack == "other content" else 0)
