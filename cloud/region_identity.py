"""Region relays' identity at the cloud (`federation.region`): enrollment with a one-time token issued for kind
region (the region's Ed25519 key is pinned like a participant's), the region's signed reads, and the check that a
statement is signed by its enrolled, unsuspended key; for staff, the list of regions and lifting a suspension
(two-person rule: `reinstate`, in the transaction that approves it in `cloud.approvals`). Every refusal of a
region's request is an audit entry with its reason (401s included: a region is a known party, its bad signatures
are evidence, not noise).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud import rbac
from cloud.db import Participant, Region
from cloud.errors import CloudError, Conflict, Forbidden, NotFound, Unauthorized
from cloud.participants import Participants, check_signed_read, raw_ed25519_key
from cloud.store import Store
from federation import region, request_auth
from federation.enrollment import binding_mac
from federation.errors import SignatureError
from federation.responses import Enrolled
from federation.wire import RegionEnrollment


class RegionIdentity:
    def __init__(self, store: Store, participants: Participants) -> None:
        self.store = store
        self.participants = participants

    @contextlib.contextmanager
    def audited(self, actor: str, **detail: object) -> Iterator[None]:
        """Every refusal of a region's request is an audit entry with its reason (401s included: a region is a
        known party, its bad signatures are evidence, not noise)."""
        try:
            yield
        except CloudError as exc:
            self.store.record("access.denied" if exc.status == 403 else "region.rejected", actor, status=exc.status,
                              reason=exc.reason, **detail)
            raise

    # -- enrollment and reads ------------------------------------------------------------------------------
    def enroll(self, req: RegionEnrollment) -> Enrolled:
        with self.audited(req.region_id, action="region.enroll"):
            raw_ed25519_key(req.public_key)
            digest = rbac.token_hash(req.token)
            with self.store.tx() as s:
                tok = Participants.usable_token(s, digest, participant_id=req.region_id, kind="region")
                if tok.kind != "region":  # a participant's token, even one open to any kind, never makes a region
                    raise Forbidden("a region enrolls only with a token issued for kind region")
                if s.get(Region, req.region_id) is not None:
                    raise Conflict(f"region {req.region_id} is already enrolled")
                if s.get(Participant, req.region_id) is not None:
                    raise Conflict(f"{req.region_id} is a participant's id")
                tok.uses_left -= 1
                tok.used_by = [*tok.used_by, req.region_id]
                s.add(Region(id=req.region_id, public_key=req.public_key))
                self.store.append(s, "region.enrolled", req.region_id, public_key=req.public_key,
                                  token_sha256_prefix=digest[:12], token_issued_by=tok.issued_by)
        binding = self.participants.binding
        return Enrolled(participant_id=req.region_id, status="enrolled", binding=binding,
                        binding_mac=binding_mac(digest, binding))

    def authenticate_read(self, authorization: str, *, method: str, path: str, query: str) -> str:
        """The region behind a signed read (`federation.request_auth`, the region's id and key)."""
        parsed = request_auth.parse(authorization)
        if parsed is None:
            raise Unauthorized("a region's read must be signed (Authorization: Wearfed-Participant id=<region>, ...)")
        rid, ts, signature = parsed
        with self.audited(rid, action="region.read", path=path), self.store.read() as s:
            r = s.get(Region, rid)
            if r is None:
                raise Forbidden(f"region {rid} is not enrolled")
            check_signed_read(r.public_key, rid, ts, signature, method=method, path=path, query=query)
        return rid

    def participant_keys(self, region_id: str, caller: str) -> dict[str, str]:
        """Enrolled participants' public keys, for the region to check its participants' signatures."""
        if caller != region_id:
            raise Forbidden(f"region {caller} may read only its own view, not {region_id}'s")
        with self.store.read() as s:
            return {p.id: p.public_key for p in s.scalars(select(Participant).order_by(Participant.id))}

    @staticmethod
    def verified(s: Session, region_id: str, doc: dict, signature: str,
                  verify_with=region.verify_statement) -> Region:  # noqa: ANN001
        r = s.get(Region, region_id)
        if r is None:
            raise Forbidden(f"region {region_id} is not enrolled")
        try:
            verify_with(r.public_key, doc, signature)
        except SignatureError as exc:
            raise Unauthorized(f"not signed by region {region_id}'s enrolled key: {exc}") from exc
        if r.suspended:
            raise Forbidden(f"region {region_id} is suspended: {r.suspended}")
        return r

    # -- staff: the list, and lifting a suspension (two-person rule) ------------------------------------------
    def list(self) -> list[dict]:
        with self.store.read() as s:
            return [{"id": r.id, "public_key": r.public_key, "enrolled_at": r.enrolled_at.isoformat(),
                     "suspended": r.suspended} for r in s.scalars(select(Region).order_by(Region.id))]

    @staticmethod
    def suspended(s: Session, region_id: str) -> Region:
        """The region, if enrolled and suspended (what a reinstatement request and its approval both check)."""
        r = s.get(Region, region_id)
        if r is None:
            raise NotFound(f"region {region_id} is not enrolled")
        if not r.suspended:
            raise Conflict(f"region {region_id} is not suspended")
        return r

    def reinstate(self, s: Session, region_id: str, *, requested_by: str, approved_by: str, reason: str,
                  approval: int) -> dict:
        """Lift a suspension inside the transaction that approves it (`cloud.approvals`); audited with both names."""
        r = self.suspended(s, region_id)
        was, r.suspended = r.suspended, None
        self.store.append(s, "region.reinstated", requested_by, region=region_id, reason=reason, suspended=was,
                          approved_by=approved_by, approval=approval)
        return {"region": region_id, "suspended": None, "was": was}
