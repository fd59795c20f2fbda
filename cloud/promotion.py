"""From candidate to production: a data scientist posts held-out metrics, a compliance officer approves (never the
round's opener) once the gates pass, an operator or admin who did not open the round promotes (gates checked
again), and one-step rollback returns to the version the last promotion replaced. After a promotion or rollback
commits, the release hooks learn the new production version (the TFLite exporter, `cloud.releases`)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.orm import Session

from cloud.db import Round
from cloud.errors import Conflict, Forbidden
from cloud.evaluations import EvaluationSources
from cloud.gatekeeper import Gatekeeper
from cloud.record_db import ModelVersion
from cloud.registry import Registry
from cloud.round_states import get_round, round_model, round_view, transition
from cloud.store import Store
from federation.responses import RollbackResult, RoundView

log = logging.getLogger(__name__)
ROLLBACK_SETTING = "rollback_armed"


class Promotion:
    def __init__(self, store: Store, registry: Registry, evaluations: EvaluationSources,
                 gatekeeper: Gatekeeper) -> None:
        self.store = store
        self.registry = registry
        self.evaluations = evaluations
        self.gatekeeper = gatekeeper
        self.release_hooks: list[Callable[[int], object]] = []  # run with the production version after a change

    @staticmethod
    def _with_model(s: Session, round_id: int) -> tuple[Round, ModelVersion]:
        r = get_round(s, round_id)
        m = round_model(s, round_id)
        if m is None:
            raise Conflict(f"round {round_id} has no model (state: {r.state})")
        return r, m

    def record_metrics(self, actor: str, round_id: int, metrics: dict[str, float]) -> RoundView:
        with self.store.refusals("round.rejected", actor, action="round.evaluate", round=round_id), \
                self.store.tx() as s:
            r, m = self._with_model(s, round_id)
            m.metrics = dict(metrics)
            self.evaluations.record_posted(s, m.version, actor, dict(metrics))
            r.evaluated_by = actor
            transition(self.store, s, r, "evaluated", actor, model_version=m.version, metrics=metrics)
            return round_view(s, r)

    def approve(self, actor: str, round_id: int) -> RoundView:
        with self.store.refusals("promotion.blocked", actor, action="round.approve", round=round_id):
            with self.store.tx() as s:
                r, m = self._with_model(s, round_id)
                if actor == r.opened_by:
                    raise Forbidden(f"segregation of duties: {actor} opened round {round_id} and may not approve it")
                if r.state != "evaluated":
                    raise Conflict(f"round {round_id} is {r.state}; only an evaluated round can be approved")
                failed = self.gatekeeper.check_and_record(s, r, m, "approve", actor)
                if not failed:
                    r.approved_by = actor
                    transition(self.store, s, r, "staged", actor, model_version=m.version, gates="passed")
                    return round_view(s, r)
            raise Conflict("; ".join(f.message for f in failed))  # the gate check above is committed and audited

    def reject(self, actor: str, round_id: int, reason: str) -> RoundView:
        with self.store.refusals("round.rejected", actor, action="round.reject", round=round_id), \
                self.store.tx() as s:
            r, m = self._with_model(s, round_id)
            m.status, r.decided_by = "rejected", actor
            transition(self.store, s, r, "rejected", actor, model_version=m.version, reason=reason)
            return round_view(s, r)

    def promote(self, actor: str, round_id: int) -> RoundView:
        with self.store.refusals("promotion.blocked", actor, action="model.promote", round=round_id):
            view = self._promote(actor, round_id)
        self._release_changed()
        return view

    def _promote(self, actor: str, round_id: int) -> RoundView:
        with self.store.tx() as s:
            r, m = self._with_model(s, round_id)
            if actor == r.opened_by:
                raise Forbidden(f"segregation of duties: {actor} opened round {round_id} and may not promote it")
            if r.state != "staged" or not r.approved_by:
                raise Conflict(f"round {round_id} is {r.state}: promotion needs a compliance officer's approval")
            failed = self.gatekeeper.check_and_record(s, r, m, "promote", actor)
            if not failed:
                old = Registry.promoted(s)
                if old is not None:
                    old.status = "retired"
                m.status, m.replaced_version, r.decided_by = "promoted", old.version if old else None, actor
                self.store.set_setting(s, ROLLBACK_SETTING, str(m.version))
                self.store.append(s, "model.promoted", actor, version=m.version, hash=m.hash, round=round_id,
                                  replaced=m.replaced_version, approved_by=r.approved_by, metrics=m.metrics)
                transition(self.store, s, r, "promoted", actor, model_version=m.version)
                return round_view(s, r)
        raise Conflict("; ".join(f.message for f in failed))  # the gate check above is committed and audited

    def rollback(self, actor: str, reason: str) -> RollbackResult:
        with self.store.refusals("rollback.rejected", actor, action="model.rollback"), self.store.tx() as s:
            armed = self.store.setting(s, ROLLBACK_SETTING)
            current = Registry.promoted(s)
            if not armed or current is None or str(current.version) != armed or current.replaced_version is None:
                raise Conflict("nothing to roll back: rollback is one step, back from the last promotion")
            previous = s.get(ModelVersion, current.replaced_version)
            current.status, previous.status = "rolled_back", "promoted"
            self.store.set_setting(s, ROLLBACK_SETTING, "")
            self.store.append(s, "model.rolled_back", actor, from_version=current.version,
                              to_version=previous.version, reason=reason)
            transition(self.store, s, s.get(Round, current.round_id), "rolled_back", actor,
                       model_version=current.version)
            result = RollbackResult(promoted=previous.version, rolled_back=current.version)
        self._release_changed()
        return result

    def _release_changed(self) -> None:
        """Tell the release hooks which version is now in production (a failing hook never undoes the change)."""
        version = self.registry.promoted_version()
        for hook in self.release_hooks:
            try:
                hook(version)
            except Exception:
                log.exception("release hook failed for v%s", version)
