"""Drift: gateways' signed telemetry histograms (participants), drift status and alerts (staff)."""

from fastapi import APIRouter

from cloud.api.deps import STAFF, CloudDep, Staff, errors
from federation.drift import DriftReport
from federation.responses import AlertView, DriftAck

router = APIRouter(tags=["governance"])


@router.post("/v1/drift/reports", tags=["participants"], responses=errors(400, 401, 403, 409))
def drift_report(rep: DriftReport, cloud: CloudDep) -> DriftAck:
    """A gateway's signed histogram of recent privatised telemetry (counts only)."""
    return cloud.drift.record(rep)


@router.get("/v1/drift", responses=errors(*STAFF))
def drift_status(cloud: CloudDep, _: Staff("round.read")) -> dict:
    return cloud.drift.status()


@router.get("/v1/drift/alerts", responses=errors(*STAFF))
def drift_alerts(cloud: CloudDep, _: Staff("round.read")) -> list[AlertView]:
    return cloud.drift.alerts()
