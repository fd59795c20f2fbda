"""A model version's lineage: the chain of versions and rounds that built it, and its DP-SGD privacy spend.

Version v (from round r) was trained from r's base model version b, which came from its own round, and so on
back to the initial version 0 (no round). The lineage privacy spend is the sum, over the lineage's rounds,
of the largest per-round epsilon any contributor spent in that round (delta as declared, unit as each update's
signed DP report declared it: one patient by default, one training window if a node chose record-level DP-SGD):
by basic composition (Dwork and Roth 2014, Theorem 3.16) an upper bound on what any one
participant spent on the data in this model. Each participant's own cumulative epsilon (one accountant
across rounds, recomputed by the privacy ledger) is tighter and is listed beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.db import Round, Update
from cloud.record_db import ModelVersion, PrivacySpend
from federation import dp_accounting


@dataclass(frozen=True)
class Lineage:
    versions: tuple[int, ...]  # this version first, back to the root
    rounds: tuple[int, ...]  # the rounds that built them, newest first
    epsilon_sum: float  # sum over rounds of the largest per-round epsilon
    per_round: dict[int, dict]  # round -> {participant: {epsilon_round, epsilon_cumulative, delta, accountant}}

    @property
    def units(self) -> tuple[str, ...]:
        """The privacy units the lineage's contributors declared (the default's when no round built it)."""
        return tuple(sorted({v["unit"] for spends in self.per_round.values() for v in spends.values()})) \
            or (dp_accounting.DEFAULT_UNIT,)

    def as_dict(self) -> dict:
        return {"versions": list(self.versions), "rounds": list(self.rounds), "epsilon_sum": self.epsilon_sum,
                "per_round": {str(k): v for k, v in self.per_round.items()}}


def declared_unit(envelope: dict | None) -> str:
    """The privacy unit an accepted update's signed DP report declared ("patient" or "window")."""
    return str(((envelope or {}).get("dp") or {}).get("unit") or dp_accounting.DEFAULT_UNIT)


def lineage(s: Session, version: int) -> Lineage:
    versions, rounds, per_round = [], [], {}
    seen: set[int] = set()
    m = s.get(ModelVersion, version)
    while m is not None and m.version not in seen:
        seen.add(m.version)
        versions.append(m.version)
        if m.round_id is None:
            break
        r = s.get(Round, m.round_id)
        rounds.append(m.round_id)
        units = {u.participant: declared_unit(u.envelope)
                 for u in s.scalars(select(Update).where(Update.round_id == m.round_id))}
        per_round[m.round_id] = {
            sp.participant: {"epsilon_round": sp.epsilon_round, "epsilon_cumulative": sp.epsilon_recomputed,
                             "delta": sp.delta, "accountant": sp.accountant,
                             "unit": units.get(sp.participant, dp_accounting.DEFAULT_UNIT)}
            for sp in s.scalars(select(PrivacySpend).where(PrivacySpend.round_id == m.round_id))
            if r is None or r.contributors is None or sp.participant in r.contributors}
        m = s.get(ModelVersion, r.base_model_version) if r is not None else None
    total = sum(max((v["epsilon_round"] for v in spends.values()), default=0.0) for spends in per_round.values())
    return Lineage(tuple(versions), tuple(rounds), float(total), per_round)
