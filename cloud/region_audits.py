"""Audits of region aggregates (`cloud.regions`): whether to demand the inputs (`demand_audit`, drawn from the OS
CSPRNG after the region has committed to its signed statement), the signed inputs' check (`signed_inputs`), whether
they make the signed aggregate byte for byte (`audit_failure`, `federation.ckks.sum_encrypted`), and a failed audit's
consequences (`refuse_and_suspend`: the aggregate refused, the region suspended, the compliance officer alerted).
"""

from __future__ import annotations

import base64
import hashlib
import secrets

from cloud.db import Region, RegionAggregateRow
from cloud.errors import BadRequest
from cloud.record_db import Alert
from cloud.region_identity import RegionIdentity
from cloud.store import Store
from federation import ckks, region
from federation.wire import RegionInputs

AUDIT_RESOLUTION = 1_000_000
DEFAULT_AUDIT_RATE = 0.1  # a region cheating in k aggregates is caught with probability 1 - 0.9^k


def demand_audit(rate: float) -> bool:
    """True with probability `rate` (to 1e-6), from the OS CSPRNG."""
    return secrets.randbelow(AUDIT_RESOLUTION) < round(rate * AUDIT_RESOLUTION)


def signed_inputs(store: Store, row: RegionAggregateRow, body: RegionInputs) -> dict[str, bytes]:
    """The inputs the region posted for `row`, each decoded, all signed by the region's enrolled key."""
    if body.aggregate_sha256 != row.aggregate_sha256:
        raise BadRequest(f"inputs are for aggregate {body.aggregate_sha256[:16]}..., posted to "
                         f"{row.aggregate_sha256[:16]}...")
    try:
        inputs = {p: base64.b64decode(c, validate=True) for p, c in body.inputs.items()}
    except ValueError as exc:
        raise BadRequest("an input is not base64") from exc
    doc = region.inputs_doc(round_id=row.round_id, region=row.region, aggregate_sha256=row.aggregate_sha256,
                            inputs=inputs)
    with store.read() as s:
        RegionIdentity.verified(s, row.region, doc, body.signature, verify_with=region.verify_inputs)
    return inputs


def audit_failure(public_context: object,  # a TenSEAL context (`federation.ckks.load_context`)
                  row: RegionAggregateRow, contributors: dict[str, str],
                  inputs: dict[str, bytes]) -> str | None:
    """Why the signed inputs do not make the signed aggregate (None: they do)."""
    if sorted(inputs) != sorted(contributors):
        return (f"the inputs are of {sorted(inputs)}, the statement lists {sorted(contributors)} "
                f"(unlisted: {sorted(set(inputs) - set(contributors))}, "
                f"missing: {sorted(set(contributors) - set(inputs))})")
    for pid, blob in inputs.items():
        if hashlib.sha256(blob).hexdigest() != contributors[pid]:
            return f"the input of {pid} is not the ciphertext {pid} signed"
    try:
        rebuilt = ckks.sum_encrypted(public_context, [inputs[p] for p in sorted(inputs)])
    except ckks.CKKSError as exc:
        return f"the inputs do not parse: {exc}"
    if rebuilt != row.aggregate:
        return ("the listed inputs do not sum to the signed aggregate (a contribution was dropped, added or "
                "altered)")
    return None


def refuse_and_suspend(store: Store, row: RegionAggregateRow, reason: str, *, body_bytes: int) -> None:
    with store.tx() as s:
        live = s.get(RegionAggregateRow, row.id)
        live.state, live.reason = "refused", reason[:500]
        r = s.get(Region, row.region)
        r.suspended = f"failed the audit of its aggregate {row.aggregate_sha256[:16]}... in round {row.round_id}"
        detail = {"round": row.round_id, "region": row.region, "aggregate_sha256": row.aggregate_sha256,
                  "reason": reason, "inputs_bytes": body_bytes}
        s.add(Alert(kind="region.audit_failed", participant=None, detail=detail))
        store.append(s, "region.audit.failed", "cloud", **detail)
        store.append(s, "region.suspended", "cloud", region=row.region, reason=r.suspended)
