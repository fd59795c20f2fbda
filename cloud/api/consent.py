"""Consent: participants' signed withdrawal and retention reports (counts only), and their summary (staff)."""

from fastapi import APIRouter

from cloud.api.deps import STAFF, CloudDep, Staff, errors
from cloud.consent import ConsentAck, ConsentReport

router = APIRouter(tags=["governance"])


@router.post("/v1/consent/reports", tags=["participants"], responses=errors(400, 401, 403, 409))
def consent_report(rep: ConsentReport, cloud: CloudDep) -> ConsentAck:
    """A node's signed report of a consent withdrawal or a retention deletion: what was deleted, in counts."""
    return cloud.consent.record(rep)


@router.get("/v1/consent", responses=errors(*STAFF))
def consent_status(cloud: CloudDep, _: Staff("round.read")) -> dict:
    return cloud.consent.status()
