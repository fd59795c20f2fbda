"""The model registry: versions with hash H(weights || created_at), status, lineage and privacy spend, the initial
model, and signed releases of promoted versions (`federation.release`).

Who sees what: versions that were ever in production (promoted, retired, rolled back) are public, without their
contributors and per-participant privacy spend; candidates and rejected versions only to staff who read rounds and to
enrolled participants (signed reads: hospitals score candidates); the full view only to staff.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud.db import utcnow
from cloud.errors import Conflict, Forbidden, NotFound
from cloud.record_db import ModelVersion
from cloud.store import Store, aware
from federation import model
from federation.release import ReleaseManifest, make_release
from federation.responses import ModelSummary, ModelView, ReleaseKey
from federation.signing import public_key_b64


def model_hash(weights: bytes, created_at: datetime) -> str:
    """H(weights || created_at) as the design fixes it (SHA-256 over the float32 bytes and ISO-8601 time)."""
    return hashlib.sha256(weights + aware(created_at).isoformat().encode()).hexdigest()


PUBLIC_STATES = ("promoted", "retired", "rolled_back")  # versions that were in production


class Registry:
    def __init__(self, store: Store, *, release_key: Ed25519PrivateKey) -> None:
        self.store = store
        self.release_key = release_key

    def ensure_initial_model(self, seed: int) -> None:
        with self.store.tx() as s:
            if s.get(ModelVersion, 0) is None:
                created = utcnow()
                w = model.init_weights(seed=seed).tobytes()
                s.add(ModelVersion(version=0, round_id=None, architecture=model.ARCHITECTURE, weights=w,
                                   hash=model_hash(w, created), created_at=created, status="promoted"))
                self.store.append(s, "model.initialised", "cloud", version=0, seed=seed, status="promoted")

    def register_candidate(self, s: Session, *, round_id: int, weights: np.ndarray, contributors: list[str],
                           n_samples: int, privacy: dict) -> ModelVersion:
        """A new candidate version from a round's aggregate, audited in the caller's transaction."""
        version = (s.scalar(select(func.max(ModelVersion.version))) or 0) + 1
        created = utcnow()
        w = np.asarray(weights, dtype=np.float32).tobytes()
        m = ModelVersion(version=version, round_id=round_id, architecture=model.ARCHITECTURE, weights=w,
                         hash=model_hash(w, created), created_at=created, participants=contributors,
                         n_samples=n_samples, status="candidate", privacy=privacy)
        s.add(m)
        self.store.append(s, "model.registered", "cloud", version=version, round=round_id, hash=m.hash,
                          participants=contributors, n_samples=n_samples, privacy=privacy)
        s.flush()
        return m

    @staticmethod
    def promoted(s: Session) -> ModelVersion | None:
        return s.scalar(select(ModelVersion).where(ModelVersion.status == "promoted"))

    def promoted_version(self) -> int:
        with self.store.read() as s:
            return s.scalar(select(ModelVersion.version).where(ModelVersion.status == "promoted"))

    @staticmethod
    def weights(m: ModelVersion) -> np.ndarray:
        return np.frombuffer(m.weights, dtype=np.float32)

    @staticmethod
    def weights_of(view: ModelView) -> np.ndarray:
        return np.frombuffer(base64.b64decode(view.weights), dtype=np.float32)

    @staticmethod
    def view(m: ModelVersion, *, full: bool = True) -> ModelView:
        """`full`: with contributors and their privacy spend (staff only)."""
        return ModelView(version=m.version, architecture=m.architecture, hash=m.hash,
                         created_at=aware(m.created_at).isoformat(), round=m.round_id,
                         participants=m.participants if full else [], n_samples=m.n_samples, status=m.status,
                         metrics=m.metrics, privacy=m.privacy if full else None,
                         weights=base64.b64encode(m.weights).decode())

    def get(self, version: int | None, *, staff: bool = True, participant: bool = False) -> ModelView:
        """One version (the newest the caller may see when `version` is None), as much as the caller may see."""
        with self.store.read() as s:
            q = select(func.max(ModelVersion.version))
            if not (staff or participant):
                q = q.where(ModelVersion.status.in_(PUBLIC_STATES))
            if version is None:
                version = s.scalar(q)
            m = s.get(ModelVersion, version)
            if m is None:
                raise NotFound(f"model version {version} does not exist")
            if not (staff or participant or m.status in PUBLIC_STATES):
                raise Forbidden(f"model version {version} is a {m.status} model: staff and enrolled participants only")
            return self.view(m, full=staff)

    def list(self) -> list[ModelSummary]:
        with self.store.read() as s:
            return [ModelSummary(version=m.version, status=m.status, round=m.round_id, hash=m.hash,
                                 created_at=aware(m.created_at).isoformat(), participants=m.participants,
                                 replaced_version=m.replaced_version)
                    for m in s.scalars(select(ModelVersion).order_by(ModelVersion.version))]

    def release(self, version: int) -> dict:
        """The signed release document of a promoted (or retired) version."""
        with self.store.read() as s:
            m = s.get(ModelVersion, version)
            if m is None:
                raise NotFound(f"model version {version} does not exist")
            if m.status not in ("promoted", "retired"):
                raise Conflict(f"model version {version} is {m.status}: only promoted models are released")
            manifest = ReleaseManifest(version=m.version, architecture=m.architecture, model_hash=m.hash,
                                       weights_sha256=hashlib.sha256(m.weights).hexdigest(),
                                       created_at=aware(m.created_at).isoformat(), round=m.round_id)
            return make_release(manifest, m.weights, self.release_key)

    def release_key_view(self) -> ReleaseKey:
        return ReleaseKey(public_key=public_key_b64(self.release_key), algorithm="Ed25519")
