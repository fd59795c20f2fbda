"""Promotion gates as a unit: evaluate `cloud.gates` on a candidate's metrics from every source, its lineage privacy
spend and its contributors' caps; store and audit every check; build model cards from the same facts."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud import consent, gates, model_card
from cloud.db import Round
from cloud.errors import NotFound
from cloud.evaluations import EvaluationSources
from cloud.explainer import Explainer
from cloud.governance_db import GateCheck
from cloud.lineage import lineage
from cloud.record_db import ModelVersion, PrivacySpend
from cloud.registry import Registry
from cloud.store import Store
from federation.dp_accounting import DEFAULT_UNIT


class Gatekeeper:
    def __init__(self, store: Store, evaluations: EvaluationSources, config: gates.GateConfig, *,
                 explainer: Explainer | None = None) -> None:
        self.store = store
        self.evaluations = evaluations
        self.config = config
        self.explainer = explainer

    def check(self, s: Session, r: Round, m: ModelVersion) -> list[gates.GateResult]:
        promoted = Registry.promoted(s)
        lin = lineage(s, m.version)
        units = {p: v["unit"] for p, v in lin.per_round.get(r.id, {}).items()}
        over_cap = [f"{sp.participant} spent epsilon {sp.epsilon_recomputed:.4f} > cap {sp.cap} "
                    f"(delta {sp.delta}, per {units.get(sp.participant, DEFAULT_UNIT)}, {sp.accountant})"
                    for sp in s.scalars(select(PrivacySpend).where(PrivacySpend.round_id == r.id))
                    if sp.cap is not None and sp.epsilon_recomputed > sp.cap]
        by_source = self.evaluations.by_source
        cand = gates.Candidate(version=m.version, metrics=by_source(s, m.version),
                               promoted_version=promoted.version if promoted is not None else None,
                               promoted_metrics=by_source(s, promoted.version) if promoted else {},
                               lineage_epsilon=lin.epsilon_sum, lineage_rounds=lin.rounds, lineage_units=lin.units,
                               over_cap=tuple(over_cap))
        return gates.check(self.config, cand)

    def record(self, s: Session, version: int, action: str, actor: str,
               results: list[gates.GateResult]) -> list[gates.GateResult]:
        """Store and audit one gate check; returns the failures."""
        failed = gates.failures(results)
        s.add(GateCheck(model_version=version, action=action, actor=actor, passed=not failed,
                        results=[x.as_dict() for x in results], config=self.config.as_dict()))
        self.store.append(s, "gates.checked", actor, model_version=version, action=action, passed=not failed,
                          failed=[x.gate + (f"({x.source})" if x.source else "") for x in failed],
                          reasons=[x.message for x in failed])
        return failed

    def check_and_record(self, s: Session, r: Round, m: ModelVersion, action: str,
                         actor: str) -> list[gates.GateResult]:
        return self.record(s, m.version, action, actor, self.check(s, r, m))

    def card(self, version: int) -> dict:
        with self.store.read() as s:
            m = s.get(ModelVersion, version)
            if m is None:
                raise NotFound(f"model version {version} does not exist")
            r = s.get(Round, m.round_id) if m.round_id is not None else None
            check = s.scalar(select(GateCheck).where(GateCheck.model_version == version)
                             .order_by(GateCheck.id.desc()).limit(1))
            validation = self.evaluations.validation
            explained = self.explainer.view(version) if self.explainer is not None else None
            return model_card.build(model=m, round_=r, lineage=lineage(s, version),
                                    metrics=self.evaluations.by_source(s, version), gate_check=check,
                                    gate_config=self.config, validation=validation.meta if validation else None,
                                    explanation=explained,
                                    consent=consent.card_section(s, m.created_at))
