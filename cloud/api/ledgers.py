"""The ledgers (auditors and compliance officers): audit entries, checkpoints, inclusion proofs, privacy, alerts."""

from typing import Annotated

from fastapi import APIRouter, Query

from cloud.api.deps import STAFF, CloudDep, Id, Size, Staff, errors
from federation.responses import AlertView, AuditEntry, CheckpointView, InclusionProof, PrivacyAccount

router = APIRouter()


@router.get("/v1/audit/entries", tags=["audit"], responses=errors(*STAFF))
def audit_entries(cloud: CloudDep, _: Staff("audit.read"), start: Size = 0,
                  limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> list[AuditEntry]:
    return cloud.ledgers.audit_entries(start=start, limit=limit)


@router.get("/v1/audit/checkpoint", tags=["audit"], responses=errors(*STAFF, 404))
def audit_checkpoint(cloud: CloudDep, _: Staff("audit.read")) -> CheckpointView:
    return cloud.ledgers.latest_checkpoint()


@router.get("/v1/audit/proof/{seq}", tags=["audit"], responses=errors(*STAFF, 404))
def audit_proof(seq: Id, cloud: CloudDep, _: Staff("audit.read")) -> InclusionProof:
    return cloud.ledgers.inclusion(seq)


@router.get("/v1/privacy/ledger", tags=["privacy"], responses=errors(*STAFF))
def privacy_ledger(cloud: CloudDep, _: Staff("privacy.read")) -> list[PrivacyAccount]:
    return cloud.ledgers.privacy()


@router.get("/v1/privacy/alerts", tags=["privacy"], responses=errors(*STAFF))
def alerts(cloud: CloudDep, _: Staff("alerts.read")) -> list[AlertView]:
    return cloud.ledgers.alerts()
